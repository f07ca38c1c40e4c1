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
        // Each kernel is timed for a fraction of a second after one call: with tiered compilation on, kernels called a few
        // times run partly in unoptimized code (attention and the cross-entropy measured several times slower that way).
        if (Environment.GetEnvironmentVariable("DOTNET_TieredCompilation") != "0")
            Console.WriteLine("note: tiered compilation is on, so rarely called kernels are timed partly unoptimized; run with DOTNET_TieredCompilation=0");
        // Process CPU time as well as wall time: on a loaded machine, with one thread, CPU time is the steadier measure.
        var process = Process.GetCurrentProcess();
        Console.WriteLine("| kernel | per step | ms each (wall) | ms each (CPU) | GFLOP/s (CPU) | ms per step (CPU) |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        double total = 0;
        void Report(string name, int count, double flops, Action action)
        {
            action();
            process.Refresh();
            var cpuStart = process.TotalProcessorTime;
            var clock = Stopwatch.StartNew();
            int runs = 0;
            while (clock.ElapsedMilliseconds < 300 || runs < 2) { action(); runs++; }
            double seconds = clock.Elapsed.TotalSeconds / runs;
            process.Refresh();
            double cpu = (process.TotalProcessorTime - cpuStart).TotalSeconds / runs;
            total += cpu * count;
            Console.WriteLine($"| {name} | {count} | {seconds * 1e3:F2} | {cpu * 1e3:F2} | {(flops > 0 ? (flops / cpu / 1e9).ToString("F1") : "")} | {cpu * count * 1e3:F1} |");
        }
        // queries, keys and values in one product; the attention output; gate and up; down; the output head
        foreach (var (inputs, outputs, count) in new[] { (s.Dim, s.QkvDim, s.Layers), (s.Dim, s.Dim, s.Layers), (s.Dim, s.Hidden, 2 * s.Layers), (s.Hidden, s.Dim, s.Layers), (s.Dim, s.VocabSize, 1) })
        {
            float[] x = Random((long)n * inputs), w = Random((long)outputs * inputs), y = Random((long)n * outputs);
            float[] dx = new float[(long)n * inputs], dw = new float[(long)outputs * inputs];
            double flops = 2.0 * n * inputs * outputs;
            Report($"forward {inputs}→{outputs}", count, flops, () => MatMul.Forward(x, w, y, n, inputs, outputs, threads));
            Report($"input gradient {inputs}→{outputs}", count, flops, () => MatMul.BackwardInput(y, w, dx, n, inputs, outputs, false, threads));
            Report($"weight gradient {inputs}→{outputs}", count, flops, () => MatMul.BackwardWeight(y, x, dw, n, inputs, outputs, threads));
        }
        var attention = new Attention(s);
        float[] qkv = Random((long)n * s.QkvDim), probs = new float[(long)batch * s.Heads * s.Context * s.Context];
        float[] o = new float[(long)n * s.Dim], dQkv = new float[(long)n * s.QkvDim];
        double attentionFlops = 4.0 * n * s.Dim * (s.Context + 1) / 2;
        Report("attention forward", s.Layers, attentionFlops, () => attention.Forward(qkv, probs, o, batch, s.Context, default, threads));
        Report("attention backward", s.Layers, 2 * attentionFlops, () => attention.Backward(o, qkv, probs, dQkv, batch, s.Context, default, threads));
        float[] logits = Random((long)n * s.VocabSize), logitsCopy = new float[logits.Length];
        int[] targets = new int[n];
        Report("cross-entropy + gradient", 1, 0, () =>
        {
            logits.CopyTo(logitsCopy, 0);
            Layers.CrossEntropy(logits, targets, s.VocabSize, gradientScale: null, threads);
            Layers.CrossEntropy(logitsCopy, targets, s.VocabSize, gradientScale: 1f, threads);
        });
        float[] gate = Random((long)n * s.Hidden), up = Random((long)n * s.Hidden), hidden = new float[gate.Length], dGate = new float[gate.Length], dUp = new float[gate.Length];
        Report("SwiGLU forward", s.Layers, 0, () => Layers.SwiGluForward(gate, up, hidden, gate.Length, threads));
        Report("SwiGLU backward", s.Layers, 0, () => Layers.SwiGluBackward(hidden, gate, up, dGate, dUp, gate.Length, threads));
        float[] normIn = Random((long)n * s.Dim), normOut = new float[normIn.Length], gain = Random(s.Dim), inverse = new float[n], dGain = new float[s.Dim];
        Report("RMSNorm forward", 2 * s.Layers + 1, 0, () => Layers.RmsNormForward(normIn, gain, normOut, inverse, n, s.NormEpsilon, threads));
        Report("RMSNorm backward", 2 * s.Layers + 1, 0, () => Layers.RmsNormBackward(normIn, normIn, gain, inverse, normOut, dGain, n, threads));
        float[] cos = new float[s.Context * s.HeadDim / 2], sin = new float[cos.Length];
        Report("RoPE (q and k)", 4 * s.Layers, 0, () => Layers.Rope(qkv, s.QkvDim, cos, sin, n, s.Context, s.Heads, s.HeadDim, inverse: false, threads));
        var layout = new ParameterLayout(s);
        var optimizer = new AdamW(layout);
        float[] parameters = Random(layout.Count), gradients = Random(layout.Count);
        Report("clip + AdamW", 1, 0, () =>
        {
            GradientClipping.ClipByGlobalNorm(gradients, 1f, threads);
            optimizer.Update(parameters, gradients, 1e-4f, threads);
        });
        Console.WriteLine($"sum of the above: {total * 1e3:F0} ms of CPU per step");
    }
}
