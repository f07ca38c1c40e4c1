using Loom.Core.Threading;

namespace Loom.Cli;

/// <summary>Engine-wide settings chosen on the command line; every command applies them through here.</summary>
public static class EngineSettings
{
    /// <summary>Threads the compute kernels should use: --threads, or every core.</summary>
    public static int KernelThreads { get; private set; } = Environment.ProcessorCount;

    public static void SetKernelThreads(int? threads)
    {
        if (threads is { } n && (n < 1 || n > 4096)) throw new CliException($"--threads must be between 1 and 4096 (got {n})");
        KernelThreads = threads ?? Environment.ProcessorCount;
        if (LoomThreadPool.Shared.ThreadCount != KernelThreads) LoomThreadPool.SetSharedThreadCount(KernelThreads);
    }
}
