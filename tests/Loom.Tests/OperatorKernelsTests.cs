using Loom.Inference;

namespace Loom.Tests;

/// <summary>The grouped attention kernels give, head by head, exactly the bits each head gets alone (one unblocked chain).</summary>
public unsafe class OperatorKernelsTests
{
    [Theory]
    [InlineData(64, 300, 4)]
    [InlineData(80, 129, 7)] // a partial 64-column chunk; more heads per group
    [InlineData(128, 65, 3)]
    [InlineData(64, 1, 2)]
    [InlineData(32, 41, 5)] // three heads together, then two
    [InlineData(64, 77, 6)] // three and three
    public void GroupedAttentionMatchesEachHeadAloneBitForBit(int length, int count, int group)
    {
        var rng = new Random(length * 1000 + count);
        float[] q = Uniform(rng, group * length), keys = Uniform(rng, count * length), values = Uniform(rng, count * length);
        int stride = count + 3;
        var scores = new float[group * stride];
        var expectedScores = new float[group * count];
        var output = new float[group * length];
        var expected = new float[group * length];
        fixed (float* qp = q, kp = keys, vp = values, sp = scores, ep = expectedScores, op = output, xp = expected)
        {
            OperatorKernels.ScoresGroup(qp, group, kp, length, count, 0.125f, sp, stride);
            for (int g = 0; g < group; g++)
            {
                OperatorKernels.ScoresGroup(qp + g * length, 1, kp, length, count, 0.125f, ep + g * count, count);
                for (int j = 0; j < count; j++)
                    Assert.Equal(BitConverter.SingleToInt32Bits(ep[g * count + j]), BitConverter.SingleToInt32Bits(sp[g * stride + j]));
                OperatorKernels.Softmax(new Span<float>(sp + g * stride, count));
                OperatorKernels.WeightedSumGroup(vp, length, count, sp + g * stride, stride, 1, xp + g * length);
            }
            OperatorKernels.WeightedSumGroup(vp, length, count, sp, stride, group, op);
        }
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(output[i]),
                $"head {i / length} column {i % length}: grouped {output[i]:R}, alone {expected[i]:R}");
    }

    /// <summary>
    /// A block of consecutive query tokens, each seeing one more cached position than the last, gives every token the
    /// scores and weighted sums it gets alone (over exactly its visible rows), bit for bit, from F32 and F16 rows: a
    /// prompt's attention does not depend on how many of its tokens go through the cache together.
    /// </summary>
    [Theory]
    [InlineData(64, 16, 1, 3)] // a prompt's first block: token 0 sees one position
    [InlineData(64, 16, 60, 3)] // crosses the 64-row block boundary inside the query block
    [InlineData(128, 5, 130, 4)] // 32-row blocks, several of them
    [InlineData(80, 7, 9, 7)]
    [InlineData(64, 1, 200, 1)]
    public void QueryBlocksGiveEachTokenItsOwnBits(int length, int tokens, int firstVisible, int group)
    {
        var rng = new Random(length + tokens * 7 + firstVisible);
        int positions = firstVisible + tokens - 1, stride = positions + 2, queryStride = group * length + 8, outputStride = group * length + 16;
        float[] q = Uniform(rng, tokens * queryStride), keys = Uniform(rng, positions * length), values = Uniform(rng, positions * length);
        Half[] keyHalves = Array.ConvertAll(keys, f => (Half)f), valueHalves = Array.ConvertAll(values, f => (Half)f);
        float[] keyFloats = Array.ConvertAll(keyHalves, h => (float)h), valueFloats = Array.ConvertAll(valueHalves, h => (float)h);
        var scratch = new float[Math.Max(OperatorKernels.HalfBlockFloats, length)];
        foreach (bool halves in new[] { false, true })
        {
            // scratch as a step leaves it: whatever an earlier step wrote (here NaN) beyond each token's visible positions
            var scores = new float[tokens * group * stride];
            Array.Fill(scores, float.NaN);
            var output = new float[tokens * outputStride];
            var alone = new float[group * stride];
            var aloneOutput = new float[group * length];
            fixed (float* qp = q, kf = keyFloats, vf = valueFloats, sp = scores, op = output, ap = alone, aop = aloneOutput, xp = scratch)
            fixed (Half* kh = keyHalves, vh = valueHalves)
            {
                void* k = halves ? kh : kf, v = halves ? vh : vf;
                OperatorKernels.ScoresTokens(qp, queryStride, tokens, group, k, halves, finite: true, length, firstVisible, 0.125f, sp, stride, xp);
                for (int i = 0; i < tokens; i++)
                {
                    OperatorKernels.ScoresGroup(qp + i * queryStride, group, kf, length, firstVisible + i, 0.125f, ap, stride);
                    for (int g = 0; g < group; g++)
                    for (int j = 0; j < firstVisible + i; j++)
                        Assert.True(BitConverter.SingleToInt32Bits(ap[g * stride + j]) == BitConverter.SingleToInt32Bits(sp[(i * group + g) * stride + j]),
                            $"{(halves ? "F16" : "F32")} token {i} head {g} position {j}: block {sp[(i * group + g) * stride + j]:R}, alone {ap[g * stride + j]:R}");
                }
                for (int row = 0; row < tokens * group; row++) OperatorKernels.Softmax(new Span<float>(sp + row * stride, firstVisible + row / group));
                OperatorKernels.WeightedSumTokens(v, halves, finite: true, length, tokens, firstVisible, sp, stride, group, op, outputStride, xp);
                for (int i = 0; i < tokens; i++)
                {
                    // the weights each token alone would use: its softmaxed scores, copied out of the block's rows
                    for (int g = 0; g < group; g++) new Span<float>(sp + (i * group + g) * stride, stride).CopyTo(new Span<float>(ap + g * stride, stride));
                    OperatorKernels.WeightedSumGroup(vf, length, firstVisible + i, ap, stride, group, aop);
                    for (int d = 0; d < group * length; d++)
                        Assert.True(BitConverter.SingleToInt32Bits(aop[d]) == BitConverter.SingleToInt32Bits(op[i * outputStride + d]),
                            $"{(halves ? "F16" : "F32")} token {i} output {d}: block {op[i * outputStride + d]:R}, alone {aop[d]:R}");
                }
            }
        }
    }

    /// <summary>
    /// An F16 cache gives exactly what F32 rows holding the same halves give: scores and weighted sums bit for bit,
    /// over several converted blocks, with subnormal and zero halves (both signs) among the values, through the short
    /// conversion for finite caches and the general one alike.
    /// </summary>
    [Theory]
    [InlineData(64, 300, 4)]
    [InlineData(80, 129, 7)]
    [InlineData(128, 65, 3)]
    [InlineData(64, 1, 1)]
    [InlineData(32, 50, 2)] // one token reads the halves in place up to four heads per key/value head
    public void HalfRowsGiveTheBitsOfTheirFloats(int length, int count, int group)
    {
        AssertHalfRowsGiveFloatBits(length, count, group, withSpecials: false, finite: true);
        AssertHalfRowsGiveFloatBits(length, count, group, withSpecials: false, finite: false);
    }

    /// <summary>A query far beyond the halves' range: F16 keys still give the F32 bits, not Inf.</summary>
    [Fact]
    public void LargeQueriesStillGiveTheBitsOfTheirFloats() =>
        Assert.DoesNotContain(AssertHalfRowsGiveFloatBits(64, 70, 4, withSpecials: false, finite: true, largeQuery: 1e5f), float.IsInfinity);

    /// <summary>Halves that overflowed to Inf or hold NaN stay Inf and NaN, as in F32 rows, through the general conversion.</summary>
    [Fact]
    public void NonFiniteHalvesStayNonFinite()
    {
        var scores = AssertHalfRowsGiveFloatBits(64, 40, 2, withSpecials: true, finite: false);
        Assert.Contains(scores, float.IsNaN);
        Assert.Contains(scores, float.IsInfinity);
    }

    /// <summary>
    /// Scores and weighted sums from F16 rows and from F32 rows holding the same values must agree bit for bit; returns
    /// the scores.
    /// </summary>
    private static float[] AssertHalfRowsGiveFloatBits(int length, int count, int group, bool withSpecials, bool finite, float largeQuery = 0)
    {
        var rng = new Random(length * 31 + count);
        var q = new float[group * length];
        for (int i = 0; i < q.Length; i++) q[i] = rng.NextSingle() * 4 - 2;
        if (largeQuery != 0) q[q.Length - 3] = largeQuery;
        Half[] Halves()
        {
            var h = new Half[count * length];
            for (int i = 0; i < h.Length; i++) h[i] = (Half)((rng.NextSingle() * 2 - 1) * MathF.Pow(2, rng.Next(-26, 8)));
            h[Math.Min(3, h.Length - 1)] = BitConverter.UInt16BitsToHalf(0x0001); // smallest subnormal
            h[Math.Min(5, h.Length - 1)] = BitConverter.UInt16BitsToHalf(0x83FF); // largest negative subnormal
            h[Math.Min(7, h.Length - 1)] = BitConverter.UInt16BitsToHalf(0x8000); // -0
            h[Math.Min(9, h.Length - 1)] = Half.MaxValue;
            if (withSpecials)
            {
                h[length + 1] = Half.PositiveInfinity;
                h[2 * length + 2] = Half.NegativeInfinity;
                h[3 * length + 3] = Half.NaN;
            }
            return h;
        }
        Half[] keys = Halves(), values = Halves();
        float[] keyFloats = Array.ConvertAll(keys, h => (float)h), valueFloats = Array.ConvertAll(values, h => (float)h);

        int stride = count + 1;
        float[] halfScores = new float[group * stride], floatScores = new float[group * stride];
        float[] halfOutput = new float[group * length], floatOutput = new float[group * length];
        var weights = new float[group * stride];
        for (int i = 0; i < weights.Length; i++) weights[i] = rng.NextSingle() / count;
        var scratch = new float[Math.Max(OperatorKernels.HalfBlockFloats, length)];
        fixed (float* qp = q, kf = keyFloats, vf = valueFloats, hs = halfScores, fs = floatScores, ho = halfOutput, fo = floatOutput, wp = weights, sp = scratch)
        fixed (Half* kh = keys, vh = values)
        {
            OperatorKernels.ScoresTokens(qp, length, 1, group, kh, halves: true, finite, length, count, 0.125f, hs, stride, sp);
            OperatorKernels.ScoresGroup(qp, group, kf, length, count, 0.125f, fs, stride);
            OperatorKernels.WeightedSumTokens(vh, halves: true, finite, length, 1, count, wp, stride, group, ho, group * length, sp);
            OperatorKernels.WeightedSumGroup(vf, length, count, wp, stride, group, fo);
        }
        AssertSameBits(floatScores, halfScores, "score");
        AssertSameBits(floatOutput, halfOutput, "output");
        return floatScores;
    }

    private static void AssertSameBits(float[] expected, float[] actual, string what)
    {
        for (int i = 0; i < expected.Length; i++)
            Assert.True(float.IsNaN(expected[i]) ? float.IsNaN(actual[i]) : BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                $"{what} {i}: F16 rows {actual[i]:R}, F32 rows {expected[i]:R}");
    }

    /// <summary>Every score against a plain double-precision dot product, at counts that leave 1–7 positions in the last block of eight.</summary>
    [Theory]
    [InlineData(64, 13, 4)]
    [InlineData(24, 9, 3)]
    [InlineData(128, 8, 1)]
    [InlineData(32, 7, 2)]
    public void ScoresAreTheDotProducts(int length, int count, int group)
    {
        var rng = new Random(length + count);
        float[] q = Uniform(rng, group * length), keys = Uniform(rng, count * length);
        int stride = count + 5;
        var scores = new float[group * stride];
        Array.Fill(scores, float.NaN);
        fixed (float* qp = q, kp = keys, sp = scores) OperatorKernels.ScoresGroup(qp, group, kp, length, count, 0.5f, sp, stride);
        for (int g = 0; g < group; g++)
        {
            for (int j = 0; j < count; j++)
            {
                double dot = 0;
                for (int d = 0; d < length; d++) dot += (double)q[g * length + d] * keys[j * length + d];
                Assert.True(Math.Abs(scores[g * stride + j] - 0.5 * dot) <= 1e-5 * (1 + Math.Abs(dot)), $"head {g} position {j}: {scores[g * stride + j]} against {0.5 * dot}");
            }
            for (int j = count; j < stride; j++) Assert.True(float.IsNaN(scores[g * stride + j]), $"head {g}: position {j} past the count was written");
        }
    }

    private static float[] Uniform(Random rng, int n)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = rng.NextSingle() * 2 - 1;
        return a;
    }
}
