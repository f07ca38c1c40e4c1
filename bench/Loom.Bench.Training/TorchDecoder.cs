using Loom.Training;
using TorchSharp;
using static TorchSharp.torch;
using TorchSharp.Modules;
using TorchAdamW = TorchSharp.Modules.AdamW;

namespace Loom.Bench.Training;

/// <summary>
/// The benchmark's PyTorch side: Loom's decoder written as one would write it for speed in PyTorch (fused
/// scaled-dot-product attention, in-graph RoPE), trained with torch.optim.AdamW and clip_grad_norm_. Its weights start
/// as copies of the Loom model's, so both sides do the same work on the same numbers.
/// </summary>
internal sealed class TorchDecoder : IDisposable
{
    private readonly ModelShape _shape;
    private readonly Dictionary<string, Parameter> _parameters = [];
    private readonly List<Parameter> _all = [];
    private readonly Tensor _cos, _sin;
    private readonly TorchAdamW _optimizer;
    private readonly float _clip, _dropout;

    public TorchDecoder(Decoder model, float weightDecay, float clip, float dropout)
    {
        _shape = model.Shape;
        _clip = clip;
        _dropout = dropout;
        foreach (var slot in model.Layout.Slots)
        {
            long[] dims = slot.Rows == 1 ? [slot.Cols] : [slot.Rows, slot.Cols];
            var parameter = new Parameter(tensor(slot.Of(model.Parameters).ToArray(), dims));
            _parameters[slot.Name] = parameter;
            _all.Add(parameter);
        }
        var slots = model.Layout.Slots;
        _optimizer = optim.AdamW(
        [
            new TorchAdamW.ParamGroup(slots.Where(s => s.Decays).Select(s => _parameters[s.Name]), new TorchAdamW.Options { weight_decay = weightDecay }),
            new TorchAdamW.ParamGroup(slots.Where(s => !s.Decays).Select(s => _parameters[s.Name]), new TorchAdamW.Options { weight_decay = 0 }),
        ], lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8);

        // RoPE angles as Loom computes them (repeated multiplication by base^(−2/headDim)).
        int pairs = _shape.HeadDim / 2;
        var cos = new float[_shape.Context * pairs];
        var sin = new float[_shape.Context * pairs];
        double thetaScale = Math.Pow(_shape.RopeBase, -2.0 / _shape.HeadDim);
        for (int t = 0; t < _shape.Context; t++)
        {
            float theta = t;
            for (int i = 0; i < pairs; i++, theta *= (float)thetaScale)
            {
                cos[t * pairs + i] = MathF.Cos(theta);
                sin[t * pairs + i] = MathF.Sin(theta);
            }
        }
        _cos = tensor(cos, [_shape.Context, pairs]);
        _sin = tensor(sin, [_shape.Context, pairs]);
    }

    /// <summary>One training step: forward, backward, gradient clipping, AdamW. Returns the loss.</summary>
    public float Step(long[] tokens, long[] targets, int batch, int seqLen, float learningRate)
    {
        using var scope = NewDisposeScope();
        _optimizer.zero_grad();
        var loss = Loss(tokens, targets, batch, seqLen);
        loss.backward();
        nn.utils.clip_grad_norm_(_all, _clip);
        foreach (var group in _optimizer.ParamGroups) group.LearningRate = learningRate;
        _optimizer.step();
        return loss.item<float>();
    }

    private Tensor Loss(long[] tokens, long[] targets, int batch, int seqLen)
    {
        var s = _shape;
        Tensor P(string name) => _parameters[name];
        var x = P("token_embd.weight").index_select(0, tensor(tokens)).view(batch, seqLen, s.Dim);
        var cos = _cos.narrow(0, 0, seqLen).view(1, seqLen, 1, s.HeadDim / 2);
        var sin = _sin.narrow(0, 0, seqLen).view(1, seqLen, 1, s.HeadDim / 2);
        int group = s.Heads / s.KvHeads;
        for (int l = 0; l < s.Layers; l++)
        {
            string b = $"blk.{l}.";
            var h = RmsNorm(x, P(b + "attn_norm.weight"));
            var q = Rope(nn.functional.linear(h, P(b + "attn_q.weight")).view(batch, seqLen, s.Heads, s.HeadDim), cos, sin).transpose(1, 2);
            var k = Rope(nn.functional.linear(h, P(b + "attn_k.weight")).view(batch, seqLen, s.KvHeads, s.HeadDim), cos, sin).transpose(1, 2);
            var v = nn.functional.linear(h, P(b + "attn_v.weight")).view(batch, seqLen, s.KvHeads, s.HeadDim).transpose(1, 2);
            if (group > 1)
            {
                k = k.repeat_interleave(group, 1);
                v = v.repeat_interleave(group, 1);
            }
            var attention = nn.functional.scaled_dot_product_attention(q, k, v, null, _dropout, true).transpose(1, 2).reshape(batch, seqLen, s.Dim);
            x = x + Dropout(nn.functional.linear(attention, P(b + "attn_output.weight")));
            var h2 = RmsNorm(x, P(b + "ffn_norm.weight"));
            var gated = nn.functional.silu(nn.functional.linear(h2, P(b + "ffn_gate.weight"))) * nn.functional.linear(h2, P(b + "ffn_up.weight"));
            x = x + Dropout(nn.functional.linear(gated, P(b + "ffn_down.weight")));
        }
        var logits = nn.functional.linear(RmsNorm(x, P("output_norm.weight")), P("token_embd.weight")).view(batch * seqLen, s.VocabSize);
        return nn.functional.cross_entropy(logits, tensor(targets));
    }

    private Tensor Dropout(Tensor x) => _dropout > 0 ? nn.functional.dropout(x, _dropout, training: true) : x;

    private Tensor RmsNorm(Tensor x, Tensor weight) => x * (x.pow(2).mean([-1], keepdim: true) + _shape.NormEpsilon).rsqrt() * weight;

    private static Tensor Rope(Tensor x, Tensor cos, Tensor sin)
    {
        var shape = x.shape;
        var pairs = x.view(shape[0], shape[1], shape[2], shape[3] / 2, 2);
        var x0 = pairs.select(-1, 0);
        var x1 = pairs.select(-1, 1);
        return stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).view(shape);
    }

    public void Dispose()
    {
        _optimizer.Dispose();
        foreach (var p in _all) p.Dispose();
        _cos.Dispose();
        _sin.Dispose();
    }
}
