using System.Diagnostics;
using System.Runtime.Intrinsics;
using Loom.Bench.Shared;

namespace Loom.Bench.Training;

/// <summary>
/// The machine's FP32 fused-multiply-add peak right now, on this many threads, with the widest vectors the runtime
/// accelerates (the ISA Loom's kernels use): ten independent FMA chains per thread, enough to cover FMA latency on
/// two pipes. Measured between the training runs, so MFU is taken against the CPU share the runs actually had.
/// </summary>
internal static class FmaPeak
{
    private const int Iterations = 20_000_000;

    public static string Isa => Vector512.IsHardwareAccelerated ? "512-bit" : "256-bit";

    public static double Measure(int threads)
    {
        int lanes = Vector512.IsHardwareAccelerated ? 16 : 8;
        var workers = new Thread[threads];
        var clock = Stopwatch.StartNew();
        for (int t = 0; t < threads; t++)
        {
            workers[t] = new Thread(() => GC.KeepAlive(Vector512.IsHardwareAccelerated ? FmaChains.Run512(Iterations) : FmaChains.Run256(Iterations)));
            workers[t].Start();
        }
        foreach (var worker in workers) worker.Join();
        return 2.0 * lanes * FmaChains.Chains * Iterations * threads / clock.Elapsed.TotalSeconds;
    }
}
