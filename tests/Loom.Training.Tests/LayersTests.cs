using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace Loom.Training.Tests;

/// <summary>The vector loops of the element-wise layers give the bits of the plain formulas they replace.</summary>
public sealed class LayersTests
{
    private static float[] Random(int count, ulong seed, float scale)
    {
        var random = new DeterministicRandom(seed);
        return Enumerable.Range(0, count).Select(_ => (float)random.NextGaussian() * scale).ToArray();
    }

    [Theory]
    [InlineData(16, false, 1)]
    [InlineData(16, true, 1)]
    [InlineData(6, false, 1)]
    [InlineData(16, true, 2)]
    [InlineData(6, false, 3)]
    public void RopeRotatesEveryPairAsThePairFormula(int headDim, bool inverse, int threads)
    {
        // rows farther apart than their heads, as the decoder's queries sit in rows of queries, keys and values
        const int rows = 10, seqLen = 5, heads = 3;
        int pairs = headDim / 2, rowStride = heads * headDim + 4;
        var cos = new float[seqLen * pairs];
        var sin = new float[seqLen * pairs];
        Layers.RopeTables(seqLen, headDim, 10000f, cos, sin);
        var data = Random(rows * rowStride, 11, 3f);
        var expected = (float[])data.Clone();
        float direction = inverse ? -1f : 1f;
        for (int r = 0; r < rows; r++)
        for (int h = 0; h < heads; h++)
        for (int i = 0; i < pairs; i++)
        {
            int at = r * rowStride + h * headDim + 2 * i, angle = r % seqLen * pairs + i;
            float x0 = expected[at], x1 = expected[at + 1], sn = direction * sin[angle];
            expected[at] = x0 * cos[angle] - x1 * sn;
            expected[at + 1] = x0 * sn + x1 * cos[angle];
        }

        Layers.Rope(data, rowStride, cos, sin, rows, seqLen, heads, headDim, inverse, threads);

        Assert.Equal(expected, data);
    }

    [Fact]
    public void SwiGluGivesTheBitsOfItsFormulaAndOfTheLibraryCalls()
    {
        // 4096 + 13 elements: a full chunk and a short one with a part shorter than a vector; gates up to ±200
        // saturate the sigmoid
        const int count = 4096 + 13;
        var gate = Random(count, 12, 4f);
        gate[5] = 200f;
        gate[6] = -200f;
        gate[count - 1] = -200f;
        float[] up = Random(count, 13, 1f), dh = Random(count, 14, 1f);
        float[] h = new float[count], dGate = new float[count], dUp = new float[count];
        Layers.SwiGluForward(gate, up, h, count, threads: 2);
        Layers.SwiGluBackward(dh, gate, up, dGate, dUp, count, threads: 2);

        // The formula, element by element, with the vector exponential the layers use.
        for (int i = 0; i < count; i++)
        {
            float g = gate[i], sigmoid = (Vector256<float>.One / (Vector256<float>.One + Vector256.Exp(Vector256.Create(-g)))).ToScalar();
            float silu = sigmoid * g;
            Assert.Equal(silu * up[i], h[i]);
            Assert.Equal(dh[i] * silu, dUp[i]);
            Assert.Equal((g - silu + 1f) * sigmoid * up[i] * dh[i], dGate[i]);
        }

        // The library calls the fused loops replaced, where the library takes the same 256-bit vectors as they do.
        if (Vector512.IsHardwareAccelerated || !Vector256.IsHardwareAccelerated) return;
        var sigmoids = new float[count];
        TensorPrimitives.Sigmoid(gate, sigmoids);
        var silus = new float[count];
        TensorPrimitives.Multiply(gate, sigmoids, silus);
        var expectedH = new float[count];
        TensorPrimitives.Multiply(silus, up, expectedH);
        var expectedDUp = new float[count];
        TensorPrimitives.Multiply(dh, silus, expectedDUp);
        var expectedDGate = new float[count];
        TensorPrimitives.Subtract(gate, silus, expectedDGate);
        TensorPrimitives.Add(expectedDGate, 1f, expectedDGate);
        TensorPrimitives.Multiply(expectedDGate, sigmoids, expectedDGate);
        TensorPrimitives.Multiply(expectedDGate, up, expectedDGate);
        TensorPrimitives.Multiply(expectedDGate, dh, expectedDGate);
        Assert.Equal(expectedH, h);
        Assert.Equal(expectedDUp, dUp);
        Assert.Equal(expectedDGate, dGate);
    }

    [Theory]
    [InlineData(96, 1)]
    [InlineData(100, 2)]
    [InlineData(100, 3)]
    [InlineData(20, 5)]
    public void RmsNormGivesTheBitsOfWholeRowsAtAnyThreadCount(int dim, int threads)
    {
        // dims not a multiple of the vector width: the gain gradient's rows end inside a vector
        const int rows = 37;
        float[] x = Random(rows * dim, 21, 2f), weight = Random(dim, 22, 1f), dy = Random(rows * dim, 23, 1f);
        float[] dxStart = Random(rows * dim, 24, 1f), dWeightStart = Random(dim, 25, 1f);

        // The rows one by one, whole, with the library calls: the formulation the split must reproduce.
        float[] expectedY = new float[rows * dim], expectedInverse = new float[rows];
        float[] expectedDx = (float[])dxStart.Clone(), expectedDWeight = (float[])dWeightStart.Clone(), weighted = new float[dim];
        for (int r = 0; r < rows; r++)
        {
            var xr = x.AsSpan(r * dim, dim);
            var dyr = dy.AsSpan(r * dim, dim);
            var yr = expectedY.AsSpan(r * dim, dim);
            var dxr = expectedDx.AsSpan(r * dim, dim);
            float s = expectedInverse[r] = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(xr) / dim + 1e-5f);
            TensorPrimitives.Multiply(xr, s, yr);
            TensorPrimitives.Multiply(yr, weight, yr);
            TensorPrimitives.Multiply(dyr, xr, weighted);
            TensorPrimitives.MultiplyAdd(weighted, s, expectedDWeight, expectedDWeight);
            TensorPrimitives.Multiply(dyr, weight, weighted);
            float projection = TensorPrimitives.Dot(weighted, xr) * s * s * s / dim;
            TensorPrimitives.MultiplyAdd(weighted, s, dxr, dxr);
            TensorPrimitives.MultiplyAdd(xr, -projection, dxr, dxr);
        }

        float[] y = new float[rows * dim], inverse = new float[rows], dx = (float[])dxStart.Clone(), dWeight = (float[])dWeightStart.Clone();
        Layers.RmsNormForward(x, weight, y, inverse, rows, 1e-5f, threads);
        Layers.RmsNormBackward(dy, x, weight, inverse, dx, dWeight, rows, threads);

        Assert.Equal(expectedY, y);
        Assert.Equal(expectedInverse, inverse);
        Assert.Equal(expectedDx, dx);
        Assert.Equal(expectedDWeight, dWeight);
    }

    [Fact]
    public void AdamWAndClippingGiveTheBitsOfTheElementFormulaAtAnyThreadCount()
    {
        // slots longer than one piece of work and shorter, with a tail shorter than a vector
        var shape = new ModelShape { VocabSize = 515, Dim = 96, Layers = 1, Heads = 4, KvHeads = 2, Hidden = 172, Context = 8 };
        var layout = new ParameterLayout(shape);
        const float beta1 = 0.9f, beta2 = 0.95f, epsilon = 1e-8f, weightDecay = 0.1f, rate = 1e-2f, maxNorm = 0.5f;

        // Element by element: torch's clip_grad_norm_ factor and AdamW's update, as the optimizer documents them.
        float[] parameters0 = Random(layout.Count, 31, 0.1f), gradients0 = Random(layout.Count, 32, 1f);
        float[] p = (float[])parameters0.Clone(), g = (float[])gradients0.Clone(), m = new float[layout.Count], v = new float[layout.Count];
        for (int step = 1; step <= 3; step++)
        {
            float factor = maxNorm / (TensorPrimitives.Norm(g) + 1e-6f);
            if (factor < 1f) TensorPrimitives.Multiply(g, factor, g);
            float correction1 = 1f - MathF.Pow(beta1, step), root = MathF.Sqrt(1f - MathF.Pow(beta2, step)), stepSize = rate / correction1;
            foreach (var slot in layout.Slots)
            {
                float decay = slot.Decays ? 1f - rate * weightDecay : 1f;
                for (int i = slot.Offset; i < slot.Offset + slot.Length; i++)
                {
                    m[i] += (g[i] - m[i]) * (1f - beta1);
                    v[i] = v[i] * beta2 + (1f - beta2) * g[i] * g[i];
                    p[i] = p[i] * decay - stepSize * m[i] / (MathF.Sqrt(v[i]) / root + epsilon);
                }
            }
        }
        float[] expected = [.. p, .. g, .. m, .. v];

        foreach (int threads in new[] { 1, 2, 3 })
        {
            float[] parameters = (float[])parameters0.Clone(), gradients = (float[])gradients0.Clone();
            var optimizer = new AdamW(layout, beta1, beta2, epsilon, weightDecay);
            for (int step = 0; step < 3; step++)
            {
                GradientClipping.ClipByGlobalNorm(gradients, maxNorm, threads);
                optimizer.Update(parameters, gradients, rate, threads);
            }
            float[] state = [.. parameters, .. gradients, .. optimizer.FirstMoment, .. optimizer.SecondMoment];
            Assert.Equal(expected, state);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void EmbeddingLookupAndGradientGiveTheBitsOfTheRowLoops(int threads)
    {
        // repeated ids: their gradient rows add up in token order; a dim that ends inside a vector
        const int vocab = 7, dim = 20, count = 50;
        var slot = new TensorSlot("token_embd.weight", 3, vocab, dim, true);
        var table = Random(3 + vocab * dim, 41, 1f);
        var random = new DeterministicRandom(42);
        var ids = Enumerable.Range(0, count).Select(_ => random.NextInt(vocab)).ToArray();
        var rows = new float[count * dim];
        Layers.Gather(table, slot, ids, rows, count, threads);
        for (int r = 0; r < count; r++) Assert.Equal(table.AsSpan(3 + ids[r] * dim, dim).ToArray(), rows.AsSpan(r * dim, dim).ToArray());

        var gradient = Random(count * dim, 43, 1f);
        var expected = (float[])table.Clone();
        for (int r = 0; r < count; r++)
        for (int c = 0; c < dim; c++) expected[3 + ids[r] * dim + c] += gradient[r * dim + c];
        Layers.ScatterAdd(gradient, ids, count, table, slot, threads);
        Assert.Equal(expected, table);

        ids[7] = vocab;
        Assert.Throws<ArgumentOutOfRangeException>(() => Layers.Gather(table, slot, ids, rows, count, threads));
        Assert.Throws<ArgumentOutOfRangeException>(() => Layers.ScatterAdd(gradient, ids, count, table, slot, threads));
    }
}
