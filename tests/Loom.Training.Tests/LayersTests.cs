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
    [InlineData(16, false)]
    [InlineData(16, true)]
    [InlineData(6, false)]
    public void RopeRotatesEveryPairAsThePairFormula(int headDim, bool inverse)
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

        Layers.Rope(data, rowStride, cos, sin, rows, seqLen, heads, headDim, inverse);

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
}
