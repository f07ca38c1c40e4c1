namespace Loom.Tests.Conformance;

/// <summary>Measures of how far two sets of logits (positions × vocab, row-major) are apart.</summary>
public static class Comparison
{
    /// <summary>Index of the largest value; the lowest index wins ties, as llama.cpp's greedy sampler does.</summary>
    public static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++)
            if (values[i] > values[best]) best = i;
        return best;
    }

    /// <summary>Largest |a - b| over all positions divided by the reference's logit range (max - min) at that position.</summary>
    public static double MaxRelativeDiff(ReadOnlySpan<float> reference, ReadOnlySpan<float> actual, int vocab)
    {
        CheckShapes(reference, actual, vocab);
        double worst = 0;
        for (int p = 0; p < reference.Length / vocab; p++)
        {
            var r = reference.Slice(p * vocab, vocab);
            var a = actual.Slice(p * vocab, vocab);
            float min = float.MaxValue, max = float.MinValue;
            double diff = 0;
            for (int i = 0; i < vocab; i++)
            {
                min = Math.Min(min, r[i]);
                max = Math.Max(max, r[i]);
                double d = Math.Abs((double)r[i] - a[i]);
                // NaN in either makes the comparison fail loudly instead of being skipped by Math.Max.
                diff = double.IsNaN(d) ? double.PositiveInfinity : Math.Max(diff, d);
            }
            worst = Math.Max(worst, diff / Math.Max(max - min, 1e-30));
        }
        return worst;
    }

    /// <summary>Mean over positions of KL(softmax(reference) || softmax(actual)) in nats.</summary>
    public static double MeanKlDivergence(ReadOnlySpan<float> reference, ReadOnlySpan<float> actual, int vocab)
    {
        CheckShapes(reference, actual, vocab);
        int positions = reference.Length / vocab;
        double total = 0;
        for (int p = 0; p < positions; p++)
        {
            var r = reference.Slice(p * vocab, vocab);
            var a = actual.Slice(p * vocab, vocab);
            // KL = sum p_i (r_i - a_i) - logZr + logZa, with p's weights from the pass that sums them (two exp passes, not three).
            double maxR = double.NegativeInfinity;
            foreach (float v in r) maxR = Math.Max(maxR, v);
            double sumR = 0, weighted = 0;
            for (int i = 0; i < vocab; i++)
            {
                double w = Math.Exp(r[i] - maxR);
                sumR += w;
                weighted += w * ((double)r[i] - a[i]);
            }
            double kl = weighted / sumR - (maxR + Math.Log(sumR)) + LogSumExp(a);
            total += double.IsNaN(kl) ? double.PositiveInfinity : kl;
        }
        return total / positions;
    }

    /// <summary>Fraction of positions whose argmax agrees.</summary>
    public static double ArgMaxAgreement(ReadOnlySpan<float> reference, ReadOnlySpan<float> actual, int vocab)
    {
        CheckShapes(reference, actual, vocab);
        int positions = reference.Length / vocab, same = 0;
        for (int p = 0; p < positions; p++)
            if (ArgMax(reference.Slice(p * vocab, vocab)) == ArgMax(actual.Slice(p * vocab, vocab))) same++;
        return (double)same / positions;
    }

    /// <summary>
    /// Argmax agreement over the positions where the reference's choice is decisive: its top logit leads the runner-up
    /// by more than <paramref name="minLeadFraction"/> of that position's logit range. Near-ties are left out because
    /// bit-level differences legitimately flip them (llama.cpp's own AVX2 and AVX-512 builds do, on quantized files).
    /// </summary>
    public static (double Agreement, int DecisivePositions) DecisiveArgMaxAgreement(ReadOnlySpan<float> reference, ReadOnlySpan<float> actual, int vocab, double minLeadFraction)
    {
        CheckShapes(reference, actual, vocab);
        int decisive = 0, same = 0;
        for (int p = 0; p < reference.Length / vocab; p++)
        {
            var r = reference.Slice(p * vocab, vocab);
            int best = ArgMax(r);
            float runnerUp = float.MinValue, min = float.MaxValue;
            for (int i = 0; i < vocab; i++)
            {
                min = Math.Min(min, r[i]);
                if (i != best) runnerUp = Math.Max(runnerUp, r[i]);
            }
            if (r[best] - runnerUp <= minLeadFraction * (r[best] - min)) continue;
            decisive++;
            if (ArgMax(actual.Slice(p * vocab, vocab)) == best) same++;
        }
        return (decisive == 0 ? 0 : (double)same / decisive, decisive);
    }

    /// <summary>Smallest and largest logit over all positions, to show the scale the relative figures refer to.</summary>
    public static (float Min, float Max) Range(ReadOnlySpan<float> logits)
    {
        float min = float.MaxValue, max = float.MinValue;
        foreach (float v in logits)
        {
            min = Math.Min(min, v);
            max = Math.Max(max, v);
        }
        return (min, max);
    }

    private static double LogSumExp(ReadOnlySpan<float> x)
    {
        double max = double.NegativeInfinity;
        foreach (float v in x) max = Math.Max(max, v);
        double sum = 0;
        foreach (float v in x) sum += Math.Exp(v - max);
        return max + Math.Log(sum);
    }

    private static void CheckShapes(ReadOnlySpan<float> reference, ReadOnlySpan<float> actual, int vocab)
    {
        if (reference.Length != actual.Length || reference.Length == 0 || reference.Length % vocab != 0)
            throw new ArgumentException($"logit arrays differ in shape: reference {reference.Length}, actual {actual.Length}, vocab {vocab}");
    }
}
