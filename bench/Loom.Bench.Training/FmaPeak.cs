using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Loom.Bench.Training;

/// <summary>
/// The machine's FP32 fused-multiply-add peak right now, on this many threads, with the widest vectors the runtime
/// accelerates (the ISA Loom's kernels use): ten independent FMA chains per thread, enough to cover FMA latency on
/// two pipes. Measured between the training runs, so MFU is taken against the CPU share the runs actually had.
/// </summary>
internal static class FmaPeak
{
    private const int Iterations = 20_000_000;
    private const int Chains = 10;

    public static string Isa => Vector512.IsHardwareAccelerated ? "512-bit" : "256-bit";

    public static double Measure(int threads)
    {
        int lanes = Vector512.IsHardwareAccelerated ? 16 : 8;
        var workers = new Thread[threads];
        var clock = Stopwatch.StartNew();
        for (int t = 0; t < threads; t++)
        {
            workers[t] = new Thread(() => GC.KeepAlive(Vector512.IsHardwareAccelerated ? Run512() : Run256()));
            workers[t].Start();
        }
        foreach (var worker in workers) worker.Join();
        return 2.0 * lanes * Chains * Iterations * threads / clock.Elapsed.TotalSeconds;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float Run256()
    {
        var m = Vector256.Create(0.999999f);
        var d = Vector256.Create(1e-7f);
        Vector256<float> a0 = Vector256.Create(1f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
        for (int i = 0; i < Iterations; i++)
        {
            a0 = Vector256.FusedMultiplyAdd(a0, m, d); a1 = Vector256.FusedMultiplyAdd(a1, m, d); a2 = Vector256.FusedMultiplyAdd(a2, m, d);
            a3 = Vector256.FusedMultiplyAdd(a3, m, d); a4 = Vector256.FusedMultiplyAdd(a4, m, d); a5 = Vector256.FusedMultiplyAdd(a5, m, d);
            a6 = Vector256.FusedMultiplyAdd(a6, m, d); a7 = Vector256.FusedMultiplyAdd(a7, m, d); a8 = Vector256.FusedMultiplyAdd(a8, m, d);
            a9 = Vector256.FusedMultiplyAdd(a9, m, d);
        }
        return Vector256.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float Run512()
    {
        var m = Vector512.Create(0.999999f);
        var d = Vector512.Create(1e-7f);
        Vector512<float> a0 = Vector512.Create(1f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
        for (int i = 0; i < Iterations; i++)
        {
            a0 = Vector512.FusedMultiplyAdd(a0, m, d); a1 = Vector512.FusedMultiplyAdd(a1, m, d); a2 = Vector512.FusedMultiplyAdd(a2, m, d);
            a3 = Vector512.FusedMultiplyAdd(a3, m, d); a4 = Vector512.FusedMultiplyAdd(a4, m, d); a5 = Vector512.FusedMultiplyAdd(a5, m, d);
            a6 = Vector512.FusedMultiplyAdd(a6, m, d); a7 = Vector512.FusedMultiplyAdd(a7, m, d); a8 = Vector512.FusedMultiplyAdd(a8, m, d);
            a9 = Vector512.FusedMultiplyAdd(a9, m, d);
        }
        return Vector512.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9);
    }
}
