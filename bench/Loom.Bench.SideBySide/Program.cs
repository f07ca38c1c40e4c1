using System.Diagnostics;
using System.Globalization;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using LLama;
using LLama.Native;
using Loom.Bench.SideBySide;
using Loom.Core;
using Loom.Core.IO;
using Loom.Core.Threading;

// Loom and llama.cpp side by side on the same random-weight GGUF files, alternating within one process.
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
Options options;
try
{
    options = Options.Parse(args);
}
catch (ArgumentException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    Console.Error.WriteLine(Options.Usage);
    return 2;
}

if (options.LlamaAvx is { } avx) NativeLibraryConfig.All.WithAvx(avx);
NativeLogConfig.llama_log_set((_, _) => { });
NativeApi.llama_empty_call(); // loads the native library now, so its choice of CPU variant is fixed before any timing

Directory.CreateDirectory(options.Directory);
using var report = new Report(options.OutputPath);
using var ceiling = new ReadCeiling();
report.Header(options);

if (options.EndToEndPrompts is { } promptsFile)
{
    RunEndToEnd(options, promptsFile, report);
    return 0;
}

foreach (var shape in options.Shapes)
{
    string basePath = Path.Combine(options.Directory, $"{shape.Name}-base-f16.gguf");
    if (!File.Exists(basePath))
    {
        var clock = Stopwatch.StartNew();
        SyntheticGguf.Write(shape, basePath);
        Console.Error.WriteLine($"wrote {basePath} in {clock.Elapsed.TotalSeconds:F1} s");
    }
    foreach (var type in options.Types)
    {
        string path = Path.Combine(options.Directory, $"{shape.Name}-{type.Name}.gguf");
        if (!File.Exists(path))
        {
            var clock = Stopwatch.StartNew();
            if (!LLamaQuantizer.Quantize(basePath, path, type.Ftype, nthread: Environment.ProcessorCount, allowRequantize: true, quantizeOutputTensor: true))
                throw new InvalidOperationException($"llama.cpp could not quantize {basePath} to {type.Name}");
            Console.Error.WriteLine($"quantized {path} in {clock.Elapsed.TotalSeconds:F1} s");
        }
        RunFile(shape, type.Name, path, options, report, ceiling);
    }
}
report.BandwidthTable();
return 0;

static void RunFile(ModelShape shape, string type, string path, Options o, Report report, ReadCeiling ceiling)
{
    int sessionContext = Math.Max(o.PromptTokens.DefaultIfEmpty(0).Max(), o.DecodeDepth + o.GenTokens) + 8;
    int batchContext = o.BatchSteps + 8;
    // Enough ids for the longest prompt; batched steps index into them cyclically.
    var tokens = PseudoRandomTokens(sessionContext, shape.Vocab);
    using var loom = new LoomEngine(path, sessionContext, batchContext, o.LoomHugePages);
    using var llama = new LlamaCppEngine(path, sessionContext, batchContext);

    var tests = new List<(string Name, Func<IEngine, int, double> Run, bool Decode)>();
    foreach (int p in o.PromptTokens) tests.Add(($"prefill {p}", (e, t) => e.Prefill(tokens, p, t), false));
    if (o.GenTokens > 0)
        tests.Add((o.DecodeDepth > 0 ? $"decode {o.GenTokens} @ {o.DecodeDepth}" : $"decode {o.GenTokens}",
            (e, t) => o.GenTokens / DecodeAfter(e, tokens, o.DecodeDepth, 0, o.GenTokens, t), true));
    foreach (int n in o.Sequences) tests.Add(($"{n} seq × {o.BatchSteps}", (e, t) => e.Batched(tokens, n, o.BatchSteps, t), false));

    foreach (int threads in o.Threads)
        foreach (var (name, run, decode) in tests)
        {
            string load = LoadAverage();
            // Warm up both engines with the same number of runs (Loom's JIT needs a few to reach its optimized code),
            // and configure llama.cpp at its best: try flash attention off and on, keep the faster.
            for (int i = 0; i < 4; i++) run(loom, threads);
            var flashRates = new Dictionary<bool, double>();
            foreach (bool flash in new[] { false, true })
            {
                llama.FlashAttention = flash;
                run(llama, threads);
                flashRates[flash] = run(llama, threads);
            }
            llama.FlashAttention = flashRates[true] > flashRates[false];

            var loomRates = new double[o.Repetitions];
            var llamaRates = new double[o.Repetitions];
            // Decode streams every weight once per token, so it is held to the memory read rate of the moment: each
            // repetition records the rate read between its segments (see DecodeInterleaved).
            var readRates = new double[o.Repetitions];
            for (int r = 0; r < o.Repetitions; r++)
            {
                if (decode)
                {
                    (loomRates[r], llamaRates[r], readRates[r]) = DecodeInterleaved(loom, llama, tokens, o.DecodeDepth, o.GenTokens, o.DecodeSegment, threads, r, ceiling);
                    continue;
                }
                // Alternate which engine goes first, so slow drifts in machine load hit both alike.
                if (r % 2 == 0)
                {
                    loomRates[r] = Settled(() => run(loom, threads));
                    llamaRates[r] = Settled(() => run(llama, threads));
                }
                else
                {
                    llamaRates[r] = Settled(() => run(llama, threads));
                    loomRates[r] = Settled(() => run(loom, threads));
                }
            }
            report.Row(shape.Name, type, threads, name, loomRates, llamaRates, llama.FlashAttention, $"{load} → {LoadAverage()}");
            if (decode)
                report.Bandwidth(shape.Name, type, threads, name, loom.WeightBytesPerToken, loomRates, llamaRates, readRates);
        }
}

// Decode in alternating segments: both engines decode the same positions in turns of `segment` tokens (which goes first
// alternates), so the memory bandwidth of the moment, which decode is held to and which moves by half within seconds on
// a shared machine, falls on both alike. With a depth, each engine first prefills that many tokens (not timed, see
// DecodeAfter), so the decoded tokens attend to a long context. Returns each engine's tokens/s over the decoded tokens
// and the median of the read rates measured after each pair of segments.
static (double Loom, double Llama, double ReadRate) DecodeInterleaved(IEngine loom, IEngine llama, int[] tokens, int depth, int count, int segment,
    int threads, int repetition, ReadCeiling ceiling)
{
    double loomSeconds = 0, llamaSeconds = 0;
    var readings = new List<double>();
    for (int start = 0, k = repetition; start < count; start += segment, k++)
    {
        int n = Math.Min(segment, count - start);
        void Loom() => loomSeconds += Settled(() => DecodeAfter(loom, tokens, depth, start, n, threads));
        void Llama() => llamaSeconds += Settled(() => DecodeAfter(llama, tokens, depth, start, n, threads));
        if (k % 2 == 0) { Loom(); Llama(); }
        else { Llama(); Loom(); }
        readings.Add(ceiling.Measure(threads));
    }
    return (count / loomSeconds, count / llamaSeconds, Statistics.Median(readings));
}

// Seconds to decode tokens [depth + start, depth + start + count) one call each. A decode from the start of a depth
// prefills the depth first (not timed); later segments continue the same cache.
static double DecodeAfter(IEngine engine, int[] tokens, int depth, int start, int count, int threads)
{
    if (depth == 0) return engine.DecodeSegment(tokens, start, count, threads);
    if (start == 0) engine.Prefill(tokens, depth, threads);
    return engine.DecodeSegment(tokens, depth + start, count, threads);
}

// The end-to-end test on the first shape and type: Loom's `loom generate` process against llama.cpp's continuous
// batching, each parallel setting (and llama.cpp with flash attention off and on), alternating, reps times.
static void RunEndToEnd(Options o, string promptsFile, Report report)
{
    var shape = o.Shapes[0];
    var type = o.Types[0];
    string path = Path.Combine(o.Directory, $"{shape.Name}-{type.Name}.gguf");
    if (!File.Exists(path)) throw new FileNotFoundException($"{path} is missing: run the side-by-side tests for {shape.Name} {type.Name} first");
    var prompts = File.ReadAllLines(promptsFile).Where(l => l.Trim().Length > 0).ToArray();
    int threads = o.Threads[0];
    report.EndToEndHeader(shape.Name, type.Name, prompts.Length, o.EndToEndTokens, threads, o.LoomDll);
    foreach (int parallel in o.EndToEndParallel)
        for (int r = 0; r < o.Repetitions; r++)
        {
            var runs = new List<(string Engine, EndToEnd.Result Result)>();
            void Loom() => runs.Add(("Loom", EndToEnd.RunLoom(o.LoomDll, path, promptsFile, o.EndToEndTokens, parallel, threads)));
            void Llama(bool flash) => runs.Add(($"llama.cpp FA {(flash ? "on" : "off")}", EndToEnd.RunLlamaCpp(path, prompts, o.EndToEndTokens, parallel, threads, flash)));
            if (r % 2 == 0) { Loom(); Llama(false); Llama(true); }
            else { Llama(true); Llama(false); Loom(); }
            foreach (var (engine, result) in runs) report.EndToEndRow(parallel, r + 1, engine, result, LoadAverage());
        }
}

// A short pause first lets the other engine's spinning worker threads go to sleep.
static double Settled(Func<double> run)
{
    Thread.Sleep(100);
    return run();
}

static int[] PseudoRandomTokens(int count, int vocab)
{
    var ids = new int[count];
    ulong state = 0x9E3779B97F4A7C15UL;
    for (int i = 0; i < count; i++)
    {
        state = state * 6364136223846793005UL + 1442695040888963407UL;
        ids[i] = (int)((state >> 33) % (ulong)(vocab - 1)); // never the end-of-text control token
    }
    return ids;
}

static string LoadAverage() =>
    File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "?";

internal sealed record QuantType(string Name, LLamaFtype Ftype)
{
    public static readonly QuantType[] All =
    [
        new("F16", LLamaFtype.MOSTLY_F16), new("Q8_0", LLamaFtype.MOSTLY_Q8_0),
        new("Q4_0", LLamaFtype.MOSTLY_Q4_0), new("Q4_K_M", LLamaFtype.MOSTLY_Q4_K_M),
    ];

    public static QuantType Parse(string name) =>
        All.FirstOrDefault(t => t.Name.Equals(name, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"unknown type '{name}'; known: {string.Join(", ", All.Select(t => t.Name))}");
}

internal sealed record Options
{
    public ModelShape[] Shapes { get; init; } = [ModelShape.SmolLM2];
    public QuantType[] Types { get; init; } = QuantType.All;
    public int[] Threads { get; init; } = [1, 2];
    public int[] PromptTokens { get; init; } = [128, 512];
    public int GenTokens { get; init; } = 128;
    public int DecodeSegment { get; init; } = 16;
    /// <summary>Tokens each engine prefills (not timed) before the decode test, so that its tokens attend to a long context.</summary>
    public int DecodeDepth { get; init; }
    public int[] Sequences { get; init; } = [8, 32];
    public int BatchSteps { get; init; } = 128;
    public int Repetitions { get; init; } = 3;
    public string Directory { get; init; } = Path.Combine(Path.GetTempPath(), "loom-bench");
    public string? OutputPath { get; init; }
    public AvxLevel? LlamaAvx { get; init; }
    public bool LoomHugePages { get; init; } = true;
    public string? EndToEndPrompts { get; init; }
    public int[] EndToEndParallel { get; init; } = [8, 32];
    public int EndToEndTokens { get; init; } = 128;
    public string LoomDll { get; init; } = "src/Loom.Cli/bin/Release/net10.0/loom.dll";

    public const string Usage = """
        usage: Loom.Bench.SideBySide [--shapes smollm2-135m,qwen2.5-0.5b,llama3.2-1b] [--types F16,Q8_0,Q4_0,Q4_K_M]
                                     [--threads 1,2] [--prompt 128,512] [--gen 128] [--decode-segment 16] [--decode-depth 0] [--sequences 8,32] [--batch-steps 128]
                                     [--reps 3] [--dir DIR] [--out FILE.md] [--llama-avx avx2|avx512] [--loom-huge-pages on|off]
                                     [--e2e PROMPTS.txt [--e2e-parallel 8,32] [--e2e-tokens 128] [--loom path/to/loom.dll]]
          (an empty list, e.g. --sequences "", skips those tests; files are written once into DIR and reused;
           --e2e runs only the end-to-end test, on the first shape, type and thread count)
        """;

    public static Options Parse(string[] args)
    {
        var o = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string key = args[i];
            if (i + 1 >= args.Length) throw new ArgumentException($"{key} needs a value");
            string value = args[++i];
            o = key switch
            {
                "--shapes" => o with { Shapes = List(value).Select(ModelShape.Parse).ToArray() },
                "--types" => o with { Types = List(value).Select(QuantType.Parse).ToArray() },
                "--threads" => o with { Threads = Counts(key, value) },
                "--prompt" => o with { PromptTokens = Counts(key, value) },
                "--gen" => o with { GenTokens = Count(key, value, allowZero: true) },
                "--decode-segment" => o with { DecodeSegment = Count(key, value, allowZero: false) },
                "--decode-depth" => o with { DecodeDepth = Count(key, value, allowZero: true) },
                "--sequences" => o with { Sequences = Counts(key, value) },
                "--batch-steps" => o with { BatchSteps = Count(key, value, allowZero: false) },
                "--reps" => o with { Repetitions = Count(key, value, allowZero: false) },
                "--dir" => o with { Directory = value },
                "--out" => o with { OutputPath = value },
                "--e2e" => o with { EndToEndPrompts = value },
                "--e2e-parallel" => o with { EndToEndParallel = Counts(key, value) },
                "--e2e-tokens" => o with { EndToEndTokens = Count(key, value, allowZero: false) },
                "--loom" => o with { LoomDll = value },
                "--loom-huge-pages" => o with
                {
                    LoomHugePages = value switch
                    {
                        "on" => true,
                        "off" => false,
                        _ => throw new ArgumentException($"--loom-huge-pages takes on or off (got '{value}')"),
                    },
                },
                "--llama-avx" => o with
                {
                    LlamaAvx = value.ToLowerInvariant() switch
                    {
                        "avx2" => AvxLevel.Avx2,
                        "avx512" => AvxLevel.Avx512,
                        _ => throw new ArgumentException($"--llama-avx takes avx2 or avx512 (got '{value}')"),
                    },
                },
                _ => throw new ArgumentException($"unknown option {key}"),
            };
        }
        return o;
    }

    private static string[] List(string value) => value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    private static int[] Counts(string key, string value) => List(value).Select(v => Count(key, v, allowZero: false)).ToArray();

    private static int Count(string key, string value, bool allowZero) =>
        int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && (n > 0 || allowZero && n == 0) && n <= 1 << 16
            ? n : throw new ArgumentException($"{key} takes whole numbers{(allowZero ? "" : " ≥ 1")} (got '{value}')");
}

/// <summary>Writes results as a Markdown table, to the console and optionally to a file, one row as soon as it is measured.</summary>
internal sealed class Report : IDisposable
{
    private readonly StreamWriter? _file;

    public Report(string? path) => _file = path is null ? null : new StreamWriter(path, append: false) { AutoFlush = true };

    public void Header(Options o)
    {
        string cpu = File.Exists("/proc/cpuinfo")
            ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "?"
            : "?";
        Line($"cpu: {cpu}, {Environment.ProcessorCount} logical cores; started {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        Line($"Loom kernels: {(Avx512F.IsSupported && Avx512BW.IsSupported ? "AVX-512" : Avx2.IsSupported && Fma.IsSupported ? "AVX2" : "portable")} " +
             $"(Vector512 accelerated {Vector512.IsHardwareAccelerated}), weight matrices {(o.LoomHugePages && WeightArena.HugePagesAvailable ? "in 2 MiB pages" : "in the memory map")}; " +
             $"llama.cpp CPU variant: {o.LlamaAvx?.ToString() ?? "best available"}; KV cache F16 in both engines (their default)");
        Line($"llama.cpp library loaded: {LoadedLibrary("libllama.so")}");
        if (o.EndToEndPrompts is not null) return;
        Line($"repetitions {o.Repetitions}; decode {o.GenTokens} tokens{(o.DecodeDepth > 0 ? $" after {o.DecodeDepth} prefilled (not timed; the read-rate table counts weights only, not the cache)" : "")}, the engines alternating every {o.DecodeSegment}; " +
             $"batches of {string.Join("/", o.Sequences)} sequences × {o.BatchSteps} steps");
        Line("");
        Line("| shape | type | threads | test | Loom tok/s median (min–max) | llama.cpp tok/s median (min–max) | FA | Loom ÷ llama.cpp median (min–max) | load avg (start → end) |");
        Line("|---|---|---:|---|---:|---:|---|---:|---|");
    }

    public void Row(string shape, string type, int threads, string test, double[] loom, double[] llama, bool flash, string load)
    {
        var ratios = loom.Zip(llama, (a, b) => a / b).ToArray();
        Line($"| {shape} | {type} | {threads} | {test} | {Stat(loom, "F1")} | {Stat(llama, "F1")} | {(flash ? "on" : "off")} | {Stat(ratios, "F2")} | {load} |");
    }

    private readonly List<string> _bandwidthRows = [];

    /// <summary>Keeps a decode test's roofline reading for <see cref="BandwidthTable"/>: each repetition's weight bytes per second against the read rate measured during it.</summary>
    public void Bandwidth(string shape, string type, int threads, string test, long weightBytes, double[] loom, double[] llama, double[] readRates)
    {
        double[] Streamed(double[] rates) => rates.Select(r => r * weightBytes / 1e9).ToArray();
        double[] Percent(double[] streamed) => streamed.Zip(readRates, (s, c) => 100 * s / c).ToArray();
        var loomStreamed = Streamed(loom);
        var llamaStreamed = Streamed(llama);
        _bandwidthRows.Add($"| {shape} | {type} | {threads} | {test} | {weightBytes / 1e6:F1} | {Stat(readRates, "F1")} | " +
                           $"{Stat(loomStreamed, "F1")} | {Stat(Percent(loomStreamed), "F0")} | {Stat(llamaStreamed, "F1")} | {Stat(Percent(llamaStreamed), "F0")} |");
    }

    /// <summary>The roofline of every decode test run so far: weights streamed per second against the memory read rate.</summary>
    public void BandwidthTable()
    {
        if (_bandwidthRows.Count == 0) return;
        Line("");
        Line("Decode against the memory read rate (GB/s = 10^9 bytes/s; each repetition's rates are divided by the median of the readings taken after each pair of segments):");
        Line("");
        Line("| shape | type | threads | test | weights per token (MB) | read rate GB/s median (min–max) | Loom GB/s | Loom % of read rate | llama.cpp GB/s | llama.cpp % of read rate |");
        Line("|---|---|---:|---|---:|---:|---:|---:|---:|---:|");
        foreach (var row in _bandwidthRows) Line(row);
    }

    public void EndToEndHeader(string shape, string type, int prompts, int tokens, int threads, string loom)
    {
        Line($"end to end: {prompts} prompts × {tokens} new tokens (EOS ignored, greedy), {shape} {type}, {threads} threads; Loom = `dotnet {loom} generate`");
        Line("");
        Line("| parallel | rep | engine | wall s | prompt tokens | generated tokens | generated tok/s | load avg |");
        Line("|---:|---:|---|---:|---:|---:|---:|---|");
    }

    public void EndToEndRow(int parallel, int rep, string engine, EndToEnd.Result r, string load) =>
        Line($"| {parallel} | {rep} | {engine} | {r.Seconds:F2} | {r.PromptTokens} | {r.GeneratedTokens} | {r.TokensPerSecond:F1} | {load} |");

    /// <summary>Which build of a native library the process mapped (LLamaSharp picks a CPU variant at run time).</summary>
    private static string LoadedLibrary(string fileName) =>
        File.Exists("/proc/self/maps")
            ? File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).LastOrDefault() ?? "")
                .FirstOrDefault(path => path.EndsWith("/" + fileName, StringComparison.Ordinal)) ?? "not mapped"
            : "unknown";

    private static string Stat(double[] values, string format) =>
        $"{Statistics.Median(values).ToString(format)} ({values.Min().ToString(format)}–{values.Max().ToString(format)})";


    private void Line(string text)
    {
        Console.WriteLine(text);
        _file?.WriteLine(text);
    }

    public void Dispose() => _file?.Dispose();
}
