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
    public void GroupedAttentionMatchesEachHeadAloneBitForBit(int length, int count, int group)
    {
        var rng = new Random(length * 1000 + count);
        float[] Random(int n) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = rng.NextSingle() * 2 - 1; return a; }
        float[] q = Random(group * length), keys = Random(count * length), values = Random(count * length);
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
}
