using System.Numerics.Tensors;

namespace Loom.Training;

/// <summary>
/// Causal grouped-query attention over a batch of sequences, forward and backward. Work is split by
/// (sequence, key/value head): each task owns the query heads sharing that key/value head, so gradients of a shared
/// key/value head are summed by one thread in a fixed order.
/// </summary>
internal sealed class Attention(ModelShape shape)
{
    private readonly int _groupSize = shape.Heads / shape.KvHeads;
    private readonly float _scale = 1f / MathF.Sqrt(shape.HeadDim);

    /// <summary>
    /// q: [B·T, Heads·hd], k/v: [B·T, KvHeads·hd] (already rotated); writes the softmax probabilities (before dropout)
    /// to probs [B, Heads, T, T] and the head outputs to output [B·T, Heads·hd].
    /// </summary>
    public void Forward(float[] q, float[] k, float[] v, float[] probs, float[] output, int batch, int seqLen, DropoutMask mask, int threads)
    {
        int tasks = batch * shape.KvHeads;
        WorkerPool.Get(threads).For(tasks, task =>
        {
            int b = task / shape.KvHeads, kvHead = task % shape.KvHeads;
            int hd = shape.HeadDim, qStride = shape.Dim, kvStride = shape.KvDim;
            for (int head = kvHead * _groupSize; head < (kvHead + 1) * _groupSize; head++)
            {
                long probBase = ((long)b * shape.Heads + head) * seqLen * seqLen;
                for (int t = 0; t < seqLen; t++)
                {
                    var query = q.AsSpan((b * seqLen + t) * qStride + head * hd, hd);
                    var p = probs.AsSpan((int)(probBase + (long)t * seqLen), seqLen);
                    for (int j = 0; j <= t; j++)
                        p[j] = TensorPrimitives.Dot(query, k.AsSpan((b * seqLen + j) * kvStride + kvHead * hd, hd)) * _scale;
                    var visible = p[..(t + 1)];
                    float max = TensorPrimitives.Max(visible);
                    TensorPrimitives.Subtract(visible, max, visible);
                    TensorPrimitives.Exp(visible, visible);
                    TensorPrimitives.Multiply(visible, 1f / TensorPrimitives.Sum(visible), visible);
                    p[(t + 1)..].Clear();

                    var o = output.AsSpan((b * seqLen + t) * qStride + head * hd, hd);
                    o.Clear();
                    for (int j = 0; j <= t; j++)
                    {
                        float weight = mask.Active ? p[j] * mask.Factor(probBase + (long)t * seqLen + j) : p[j];
                        TensorPrimitives.MultiplyAdd(v.AsSpan((b * seqLen + j) * kvStride + kvHead * hd, hd), weight, o, o);
                    }
                }
            }
        });
    }

    /// <summary>From dOutput, writes dq and dk/dv (overwriting them), for pre-rotation-backward q/k.</summary>
    public void Backward(float[] dOutput, float[] q, float[] k, float[] v, float[] probs, float[] dq, float[] dk, float[] dv,
        int batch, int seqLen, DropoutMask mask, int threads)
    {
        int tasks = batch * shape.KvHeads;
        WorkerPool.Get(threads).For(tasks, task =>
        {
            var dp = new float[seqLen];
            int b = task / shape.KvHeads, kvHead = task % shape.KvHeads;
            int hd = shape.HeadDim, qStride = shape.Dim, kvStride = shape.KvDim;
            for (int j = 0; j < seqLen; j++)
            {
                dk.AsSpan((b * seqLen + j) * kvStride + kvHead * hd, hd).Clear();
                dv.AsSpan((b * seqLen + j) * kvStride + kvHead * hd, hd).Clear();
            }
            for (int head = kvHead * _groupSize; head < (kvHead + 1) * _groupSize; head++)
            {
                long probBase = ((long)b * shape.Heads + head) * seqLen * seqLen;
                for (int t = 0; t < seqLen; t++)
                {
                    var d = dOutput.AsSpan((b * seqLen + t) * qStride + head * hd, hd);
                    var p = probs.AsSpan((int)(probBase + (long)t * seqLen), t + 1);
                    // Through out = Σ_j dropout(p_j)·v_j: gradient of p and of every visible value.
                    for (int j = 0; j <= t; j++)
                    {
                        float factor = mask.Active ? mask.Factor(probBase + (long)t * seqLen + j) : 1f;
                        int kv = (b * seqLen + j) * kvStride + kvHead * hd;
                        dp[j] = TensorPrimitives.Dot(d, v.AsSpan(kv, hd)) * factor;
                        var dvj = dv.AsSpan(kv, hd);
                        TensorPrimitives.MultiplyAdd(d, p[j] * factor, dvj, dvj);
                    }
                    // Through the softmax: ds_j = p_j (dp_j − Σ p·dp), then through the scaled dot products.
                    float mean = TensorPrimitives.Dot(p, dp.AsSpan(0, t + 1));
                    var query = q.AsSpan((b * seqLen + t) * qStride + head * hd, hd);
                    var dqt = dq.AsSpan((b * seqLen + t) * qStride + head * hd, hd);
                    dqt.Clear();
                    for (int j = 0; j <= t; j++)
                    {
                        float ds = p[j] * (dp[j] - mean) * _scale;
                        int kv = (b * seqLen + j) * kvStride + kvHead * hd;
                        TensorPrimitives.MultiplyAdd(k.AsSpan(kv, hd), ds, dqt, dqt);
                        var dkj = dk.AsSpan(kv, hd);
                        TensorPrimitives.MultiplyAdd(query, ds, dkj, dkj);
                    }
                }
            }
        });
    }
}
