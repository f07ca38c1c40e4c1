using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Loom.Core;
using Loom.Inference;
using Loom.Models.Architectures;

namespace Loom.Cli.Commands;

/// <summary>
/// `loom bench`: prefill, decode and batched-decode throughput of a GGUF model, with memory and allocation figures.
/// Like llama-bench, it feeds fixed pseudo-random token ids (no tokenizer, no sampling), so any model file works and
/// the figures measure the forward pass alone.
/// </summary>
internal static class BenchCommand
{
    public static Command Create(CliConsole console)
    {
        var model = new Option<string?>("--model", "-m") { Description = "GGUF model file (default: the built-in models/loom-primer.gguf)", HelpName = "PATH" };
        var threads = new Option<int?>("--threads", "-t") { Description = "compute threads (default: all cores)" };
        var promptTokens = new Option<string>("--prompt-tokens", "-p")
        { Description = "prompt lengths to prefill, comma-separated", DefaultValueFactory = _ => "128,512", HelpName = "N,N" };
        var genTokens = new Option<int>("--gen-tokens", "-n") { Description = "tokens decoded one at a time per sequence", DefaultValueFactory = _ => 128 };
        var sequences = new Option<string>("--sequences", "-s")
        { Description = "sequence counts decoded together through BatchedInference, comma-separated", DefaultValueFactory = _ => "1,8,32", HelpName = "N,N" };
        var repetitions = new Option<int>("--repetitions", "-r") { Description = "timed runs of each test (after one warm-up)", DefaultValueFactory = _ => 3 };
        var noHugePages = WeightPlacementOption.Create();
        var cacheType = CacheTypeOption.Create();
        var command = new Command("bench", "Measure prefill, decode and batched throughput, memory and allocations of a model")
        {
            model, threads, promptTokens, genTokens, sequences, repetitions, noHugePages, cacheType,
        };
        command.SetAction(r => LoomCli.Guard(console, () =>
        {
            var settings = new BenchSettings(
                LoomCli.ModelOrDefault(r.GetValue(model)),
                ParseCounts(r.GetValue(promptTokens)!, "--prompt-tokens"),
                RequirePositive(r.GetValue(genTokens), "--gen-tokens"),
                ParseCounts(r.GetValue(sequences)!, "--sequences"),
                RequirePositive(r.GetValue(repetitions), "--repetitions"),
                WeightPlacementOption.LoadOptions(r, noHugePages),
                CacheTypeOption.Value(r, cacheType));
            EngineSettings.SetKernelThreads(r.GetValue(threads));
            Run(settings, EngineSettings.KernelThreads, console.Out);
            return 0;
        }));
        return command;
    }

    internal sealed record BenchSettings(string ModelPath, int[] PromptTokens, int GenTokens, int[] Sequences, int Repetitions, ModelLoadOptions Load,
        KvCacheType CacheType = KvCacheType.F16);

    internal static void Run(BenchSettings s, int threads, TextWriter output)
    {
        var inv = CultureInfo.InvariantCulture;
        long rssBefore = ProcessMemory.ResidentBytes();
        var loadClock = Stopwatch.StartNew();
        using var model = TransformerModel.Load(s.ModelPath, s.Load);
        double loadSeconds = loadClock.Elapsed.TotalSeconds;
        var config = model.Config;
        int longestPrompt = s.PromptTokens.Length == 0 ? 0 : s.PromptTokens.Max();
        int contextSize = Math.Max(longestPrompt, s.GenTokens) + 1;
        if (contextSize > config.ContextLength)
            throw new CliException($"the longest test needs {contextSize} positions but the model's context is {config.ContextLength}");
        long weightBytesPerToken = model.WeightBytesPerToken;

        output.WriteLine($"model: {s.ModelPath} ({config.Architecture}, {config.LayerCount} layers, dim {config.EmbeddingLength}, " +
                         $"vocab {config.VocabSize}, {FormatBytes(model.File.FileSize)})");
        output.WriteLine($"cpu: {CpuInfo.ModelName()}; {Environment.ProcessorCount} logical cores; {threads} kernel threads");
        output.WriteLine($"simd: {SimdSummary()}");
        output.WriteLine($"load average: {CpuInfo.LoadAverage()}; model load {loadSeconds:F2} s");
        output.WriteLine($"weights read per decoded token: {FormatBytes(weightBytesPerToken)}; " +
                         (model.HugePageWeightBytes > 0 ? $"{FormatBytes(model.HugePageWeightBytes)} of matrices in 2 MiB pages" : "all in the file's memory map"));
        output.WriteLine();
        output.WriteLine("| test | tokens/s median | min | max | note |");
        output.WriteLine("|---|---:|---:|---:|---|");

        var tokens = PseudoRandomTokens(Math.Max(longestPrompt, s.GenTokens), config.VocabSize);
        using (var session = new InferenceSession(model, contextSize, s.CacheType))
        {
            // Warm-up: JIT tiers and first-touch page faults of the mapped weights stay out of the timings.
            session.Evaluate(tokens.AsSpan(0, Math.Min(16, tokens.Length)));
            Decode(session, tokens, Math.Min(8, s.GenTokens));

            foreach (int p in s.PromptTokens)
            {
                var rates = Repeat(s.Repetitions, () =>
                {
                    session.Truncate(0);
                    long start = Stopwatch.GetTimestamp();
                    session.Evaluate(tokens.AsSpan(0, p));
                    return p / Stopwatch.GetElapsedTime(start).TotalSeconds;
                });
                Row(output, $"prefill {p}", rates, "");
            }

            long allocated = 0;
            var decodeRates = Repeat(s.Repetitions, () =>
            {
                long before = GC.GetTotalAllocatedBytes(precise: true);
                double rate = Decode(session, tokens, s.GenTokens);
                allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
                return rate;
            });
            double bandwidth = Statistics.Median(decodeRates) * weightBytesPerToken / 1e9;
            Row(output, $"decode {s.GenTokens}", decodeRates,
                $"weights streamed at {bandwidth.ToString("F1", inv)} GB/s; {(double)allocated / s.GenTokens:F0} B allocated per token");
        }

        foreach (int n in s.Sequences)
        {
            // Each sequence only ever holds the decoded tokens, so its cache needs no room for the prompts.
            using var batch = new BatchedInference(model, n, s.GenTokens + 1, s.CacheType);
            long allocated = 0;
            var runner = new BatchedDecode(batch, tokens, config.VocabSize);
            runner.Run(Math.Min(4, s.GenTokens));
            var rates = Repeat(s.Repetitions, () =>
            {
                long before = GC.GetTotalAllocatedBytes(precise: true);
                double rate = runner.Run(s.GenTokens);
                allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
                return rate;
            });
            Row(output, $"{n} sequences × {s.GenTokens}", rates,
                $"generated tokens/s over all sequences; {(double)allocated / ((long)n * s.GenTokens):F0} B allocated per token");
        }

        output.WriteLine();
        output.WriteLine($"resident memory: {FormatBytes(ProcessMemory.ResidentBytes())} now, {FormatBytes(ProcessMemory.PeakResidentBytes())} peak " +
                         $"({FormatBytes(rssBefore)} before loading; model file {FormatBytes(model.File.FileSize)}; " +
                         $"{s.CacheType} KV cache {FormatBytes(InferenceSession.KvCacheBytes(config, contextSize, s.CacheType))} for the single sequence, " +
                         $"{FormatBytes(InferenceSession.KvCacheBytes(config, s.GenTokens + 1, s.CacheType))} per batched sequence)");
        output.WriteLine($"load average after: {CpuInfo.LoadAverage()}");
    }

    /// <summary>Decodes <paramref name="count"/> tokens one at a time from an empty cache; returns tokens/s.</summary>
    private static double Decode(InferenceSession session, int[] tokens, int count)
    {
        session.Truncate(0);
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < count; i++) session.Evaluate(tokens.AsSpan(i, 1));
        return count / Stopwatch.GetElapsedTime(start).TotalSeconds;
    }

    /// <summary>Steps every slot of a batch one token at a time; all buffers are made once so a step allocates nothing here.</summary>
    private sealed class BatchedDecode
    {
        private readonly BatchedInference _batch;
        private readonly int[] _tokens;
        private readonly BatchEntry[] _entries;
        private readonly float[] _logits;

        public BatchedDecode(BatchedInference batch, int[] tokens, int vocab)
        {
            _batch = batch;
            _tokens = tokens;
            _entries = new BatchEntry[batch.MaxSequences];
            _logits = new float[(long)batch.MaxSequences * vocab];
        }

        /// <summary>Decodes <paramref name="steps"/> tokens in every slot from empty caches; returns generated tokens/s.</summary>
        public double Run(int steps)
        {
            int n = _entries.Length;
            for (int slot = 0; slot < n; slot++) _batch.Truncate(slot, 0);
            long start = Stopwatch.GetTimestamp();
            for (int step = 0; step < steps; step++)
            {
                // Each sequence gets a different token so that no two slots compute the same thing.
                for (int slot = 0; slot < n; slot++)
                    _entries[slot] = new BatchEntry(slot, new ReadOnlyMemory<int>(_tokens, (step + slot) % _tokens.Length, 1));
                _batch.Evaluate(_entries, _logits);
            }
            return (long)n * steps / Stopwatch.GetElapsedTime(start).TotalSeconds;
        }
    }

    private static double[] Repeat(int repetitions, Func<double> measure)
    {
        var results = new double[repetitions];
        for (int i = 0; i < repetitions; i++) results[i] = measure();
        return results;
    }

    private static void Row(TextWriter output, string test, double[] rates, string note)
    {
        var inv = CultureInfo.InvariantCulture;
        output.WriteLine($"| {test} | {Statistics.Median(rates).ToString("F1", inv)} | {rates.Min().ToString("F1", inv)} | {rates.Max().ToString("F1", inv)} | {note} |");
        output.Flush();
    }

    /// <summary>Deterministic token ids spread over the vocabulary (a fixed LCG, so every run feeds the same ids).</summary>
    internal static int[] PseudoRandomTokens(int count, int vocab)
    {
        var ids = new int[count];
        ulong state = 0x9E3779B97F4A7C15UL;
        for (int i = 0; i < count; i++)
        {
            state = state * 6364136223846793005UL + 1442695040888963407UL;
            ids[i] = (int)((state >> 33) % (ulong)vocab);
        }
        return ids;
    }

    internal static string SimdSummary()
    {
        string path = Avx512F.IsSupported && Avx512BW.IsSupported && Avx2.IsSupported && Fma.IsSupported ? "AVX-512 kernels"
            : Avx2.IsSupported && Fma.IsSupported ? "AVX2 kernels" : "portable kernels";
        return $"{path} (Avx512F {Avx512F.IsSupported}, Avx512BW {Avx512BW.IsSupported}, Avx2 {Avx2.IsSupported}, Fma {Fma.IsSupported}, " +
               $"AvxVnni {AvxVnni.IsSupported}, Vector512 accelerated {Vector512.IsHardwareAccelerated}, Vector256 accelerated {Vector256.IsHardwareAccelerated})";
    }

    /// <summary>A comma-separated list of counts; an empty list skips those tests.</summary>
    private static int[] ParseCounts(string text, string option)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var counts = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out counts[i]) || counts[i] < 1 || counts[i] > 1 << 20)
                throw new CliException($"{option} takes positive whole numbers separated by commas (got '{parts[i]}')");
        return counts;
    }

    private static int RequirePositive(int value, string option) =>
        value >= 1 ? value : throw new CliException($"{option} must be at least 1 (got {value})");

    internal static string FormatBytes(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F1} MiB",
        _ => $"{bytes / 1024.0:F1} KiB",
    };
}

/// <summary>Resident set size from /proc on Linux (VmRSS/VmHWM); the runtime's working set elsewhere.</summary>
internal static class ProcessMemory
{
    public static long ResidentBytes() => ReadStatusKiB("VmRSS:") ?? Environment.WorkingSet;

    public static long PeakResidentBytes() => ReadStatusKiB("VmHWM:") ?? Process.GetCurrentProcess().PeakWorkingSet64;

    private static long? ReadStatusKiB(string key)
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status)) return null;
        foreach (string line in File.ReadLines(status))
            if (line.StartsWith(key, StringComparison.Ordinal)
                && long.TryParse(line.AsSpan(key.Length).Trim().TrimEnd("kB").Trim(), CultureInfo.InvariantCulture, out long kib))
                return kib * 1024;
        return null;
    }
}

/// <summary>What the benchmark reports about the machine it ran on.</summary>
internal static class CpuInfo
{
    public static string ModelName()
    {
        const string cpuinfo = "/proc/cpuinfo";
        if (!File.Exists(cpuinfo)) return "unknown CPU";
        string? name = null, family = null, model = null;
        foreach (string line in File.ReadLines(cpuinfo))
        {
            int colon = line.IndexOf(':');
            if (colon < 0) continue;
            string key = line[..colon].Trim(), value = line[(colon + 1)..].Trim();
            if (key == "model name") name ??= value;
            else if (key == "cpu family") family ??= value;
            else if (key == "model") model ??= value;
            if (name is not null && family is not null && model is not null) break;
        }
        return $"{name ?? "unknown CPU"} (family {family ?? "?"}, model {model ?? "?"})";
    }

    public static string LoadAverage()
    {
        const string loadavg = "/proc/loadavg";
        return File.Exists(loadavg) ? string.Join(' ', File.ReadAllText(loadavg).Split(' ').Take(3)) : "unknown";
    }
}
