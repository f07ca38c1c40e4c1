namespace Loom.Server.Engine;

/// <summary>Log-probabilities from raw logits (before any sampler stage), as OpenAI reports them.</summary>
public static class Logprobs
{
    public static TokenLogprob Of(ReadOnlySpan<float> logits, int token, int top)
    {
        float max = float.NegativeInfinity;
        foreach (float l in logits) if (l > max) max = l;
        double sum = 0;
        foreach (float l in logits) sum += Math.Exp(l - max);
        float logZ = max + (float)Math.Log(sum);

        // The k largest logits by insertion into a short sorted list (k ≤ 20).
        var best = new List<(int Token, float Logprob)>(top + 1);
        if (top > 0)
        {
            for (int i = 0; i < logits.Length; i++)
            {
                float l = logits[i];
                if (best.Count == top && l <= best[^1].Logprob) continue;
                int at = best.Count;
                while (at > 0 && best[at - 1].Logprob < l) at--;
                best.Insert(at, (i, l));
                if (best.Count > top) best.RemoveAt(best.Count - 1);
            }
            for (int i = 0; i < best.Count; i++) best[i] = (best[i].Token, best[i].Logprob - logZ);
        }
        return new TokenLogprob(token, logits[token] - logZ, best);
    }
}
