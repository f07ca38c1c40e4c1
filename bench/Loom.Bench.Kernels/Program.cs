using System.Globalization;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Loom.Bench.Kernels;
using Loom.Core;

// Kernel throughput beside the machine's ceilings. In-process and short by default (each invocation is tens of
// milliseconds, so a few iterations suffice); BenchmarkDotNet's own arguments (--filter, --job, ...) still apply.
// Force the AVX2 paths with DOTNET_EnableAVX512=0 in the environment.
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
var job = Job.Default
    .WithToolchain(InProcessEmitToolchain.Instance)
    .WithLaunchCount(1).WithWarmupCount(2).WithIterationCount(5)
    .WithInvocationCount(1).WithUnrollFactor(1);
var config = ManualConfig.Create(DefaultConfig.Instance).AddJob(job.AsDefault()).WithOptions(ConfigOptions.DisableOptimizationsValidator);

Console.WriteLine($"SIMD: Avx512F {Avx512F.IsSupported}, Avx512BW {Avx512BW.IsSupported}, Avx2 {Avx2.IsSupported}, Fma {Fma.IsSupported}, " +
                  $"Vector512 accelerated {Vector512.IsHardwareAccelerated} → Loom kernels take the " +
                  (Avx512F.IsSupported && Avx512BW.IsSupported ? "AVX-512" : Avx2.IsSupported && Fma.IsSupported ? "AVX2" : "portable") + " path");
var summaries = BenchmarkSwitcher.FromTypes([typeof(CeilingBenchmarks), typeof(MatMulBenchmarks), typeof(OperatorBenchmarks)]).Run(args, config).ToArray();

Console.WriteLine();
Console.WriteLine("| benchmark | threads | median ms | GB/s | GFLOP/s |");
Console.WriteLine("|---|---:|---:|---:|---:|");
foreach (var report in summaries.SelectMany(s => s.Reports).Where(r => r.ResultStatistics is not null))
{
    var c = report.BenchmarkCase;
    double seconds = report.ResultStatistics!.Median / 1e9;
    int threads = (int)c.Parameters["Threads"];
    string method = c.Descriptor.WorkloadMethod.Name;
    (string Name, double Bytes, double Flops) row = method switch
    {
        nameof(CeilingBenchmarks.MemoryRead) => ("memory read", CeilingBenchmarks.ArrayFloats * 4.0, 0),
        nameof(CeilingBenchmarks.MemoryTriad) => ("memory triad", CeilingBenchmarks.ArrayFloats * 12.0, 0),
        nameof(CeilingBenchmarks.FmaAvx2) => ("FMA peak FP32, 256-bit", 0, FmaFlops(8)),
        nameof(CeilingBenchmarks.FmaAvx512) => ("FMA peak FP32, 512-bit", 0, FmaFlops(16)),
        nameof(OperatorBenchmarks.RmsNorm) => ($"RMSNorm {OperatorBenchmarks.Tokens} × {OperatorBenchmarks.Dim} (×{OperatorBenchmarks.Repeats})", OperatorBenchmarks.Bytes(method), 0),
        nameof(OperatorBenchmarks.Rope) => ($"RoPE {OperatorBenchmarks.Tokens} tokens × {OperatorBenchmarks.Heads} heads × {OperatorBenchmarks.HeadLength} (×{OperatorBenchmarks.Repeats})", OperatorBenchmarks.Bytes(method), 0),
        nameof(OperatorBenchmarks.Softmax) => ($"softmax {OperatorBenchmarks.Heads} rows × {OperatorBenchmarks.Context} (×{OperatorBenchmarks.Repeats})", OperatorBenchmarks.Bytes(method), 0),
        nameof(OperatorBenchmarks.DecodeAttention) or nameof(OperatorBenchmarks.DecodeAttentionF16) =>
            ($"decode attention, {(method == nameof(OperatorBenchmarks.DecodeAttention) ? "F32" : "F16")} cache, {OperatorBenchmarks.Heads} heads × {OperatorBenchmarks.Context} positions × {OperatorBenchmarks.HeadLength} (×{OperatorBenchmarks.Repeats}; K and V counted per query head)", OperatorBenchmarks.Bytes(method), OperatorBenchmarks.Flops(method)),
        _ => MatMulRow(c.Parameters),
    };
    Console.WriteLine($"| {row.Name} | {threads} | {seconds * 1e3:F2} | {Rate(row.Bytes, seconds)} | {Rate(row.Flops, seconds)} |");
}
return 0;

static double FmaFlops(int lanes) =>
    2.0 * lanes * Loom.Bench.Shared.FmaChains.Chains * CeilingBenchmarks.FmaIterations * CeilingBenchmarks.FmaChunks;

static (string, double, double) MatMulRow(BenchmarkDotNet.Parameters.ParameterInstances p)
{
    var type = (GgmlType)p["Type"];
    int tokens = (int)p["Tokens"];
    string kind = tokens == 1 ? "matvec" : $"matmul ×{tokens}";
    string layout = (bool)p["Optimized"] ? "as loaded" : "GGML layout";
    return ($"{kind} {type} {MatMulBenchmarks.Rows}×{MatMulBenchmarks.Cols}, {layout}", MatMulBenchmarks.WeightBytes(type), MatMulBenchmarks.Flops(type, tokens));
}

static string Rate(double amount, double seconds) => amount > 0 ? (amount / seconds / 1e9).ToString("F1") : "";
