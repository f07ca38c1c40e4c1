using System.Diagnostics;
using Loom.Training;

namespace Loom.Bench.Training;

/// <summary>
/// Where a training step's time goes: each matrix product of the model (forward, input gradient, weight gradient) and
/// attention, timed alone on the step's shapes, weighted by how often a step runs it.
/// </summary>
internal static class KernelProfile
{
    public static void Run(ModelShape s, int batch, int threads)
    {
        int n = batch * s.Context;
        var random = new DeterministicRandom(3);
        float[] Random(long count)
        {
            var values = new float[count];
            for (long i = 0; i < count; i++) values[i] = (float)random.NextGaussian() * 0.1f;
            return values;
        }
        Console.WriteLine("| kernel | per step | ms each | GFLOP/s | ms per step |");
        Console.WriteLine("|---|---:|---:|---:|---:|");
        double total = 0;
        void Report(string name, int count, double flops, Action action)
        {
            action();
            var clock = Stopwatch.StartNew();
            int runs = 0;
            while (clock.ElapsedMilliseconds < 300 || runs < 2) { action(); runs++; }
            double seconds = clock.Elapsed.TotalSeconds / runs;
            total += seconds * count;
            Console.WriteLine($"| {name} | {count} | {seconds * 1e3:F2} | {flops / seconds / 1e9:F1} | {seconds * count * 1e3:F1} |");
        }
        foreach (var (inputs, outputs, count) in new[] { (s.Dim, s.Dim, 2 * s.Layers), (s.Dim, s.KvDim, 2 * s.Layers), (s.Dim, s.Hidden, 2 * s.Layers), (s.Hidden, s.Dim, s.Layers), (s.Dim, s.VocabSize, 1) })
        {
            float[] x = Random((long)n * inputs), w = Random((long)outputs * inputs), y = Random((long)n * outputs);
            float[] dx = new float[(long)n * inputs], dw = new float[(long)outputs * inputs];
            double flops = 2.0 * n * inputs * outputs;
            Report($"forward {inputs}→{outputs}", count, flops, () => MatMul.Forward(x, w, y, n, inputs, outputs, threads));
            Report($"input gradient {inputs}→{outputs}", count, flops, () => MatMul.BackwardInput(y, w, dx, n, inputs, outputs, false, threads));
            Report($"weight gradient {inputs}→{outputs}", count, flops, () => MatMul.BackwardWeight(y, x, dw, n, inputs, outputs, threads));
        }
        var attention = new Attention(s);
        float[] q = Random((long)n * s.Dim), k = Random((long)n * s.KvDim), v = Random((long)n * s.KvDim), probs = new float[(long)batch * s.Heads * s.Context * s.Context];
        float[] o = new float[(long)n * s.Dim], dq = new float[(long)n * s.Dim], dk = new float[(long)n * s.KvDim], dv = new float[(long)n * s.KvDim];
        double attentionFlops = 4.0 * n * s.Dim * (s.Context + 1) / 2;
        Report("attention forward", s.Layers, attentionFlops, () => attention.Forward(q, k, v, probs, o, batch, s.Context, default, threads));
        Report("attention backward", s.Layers, 2 * attentionFlops, () => attention.Backward(o, q, k, v, probs, dq, dk, dv, batch, s.Context, default, threads));
        Console.WriteLine($"sum of the above: {total * 1e3:F0} ms per step");
    }
}
