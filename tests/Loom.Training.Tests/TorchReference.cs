using Loom.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Loom.Training.Tests;

/// <summary>
/// The same decoder written with PyTorch's tensor operations and autograd (TorchSharp): the reference that Loom's
/// hand-written forward and backward passes are checked against. Its parameters start as copies of a Loom model's.
/// With bf16, every matrix product takes its inputs rounded to bfloat16 (PyTorch's round-to-nearest-even cast) and
/// multiplies them in fp32: autocast's arithmetic, written out because TorchSharp has no autocast.
/// </summary>
internal sealed class TorchReference : IDisposable
{
    private readonly ModelShape _shape;
    private readonly ParameterLayout _layout;
    private readonly Dictionary<string, Parameter> _parameters = new();
    private readonly Tensor _cos, _sin;
    private readonly bool _bf16;

    public TorchReference(Decoder model, bool bf16 = false)
    {
        _bf16 = bf16;
        _shape = model.Shape;
        _layout = model.Layout;
        foreach (var slot in _layout.Slots)
        {
            long[] dims = slot.Rows == 1 ? [slot.Cols] : [slot.Rows, slot.Cols];
            _parameters[slot.Name] = new Parameter(tensor(slot.Of(model.Parameters).ToArray(), dims));
        }
        // RoPE tables from the same formula Loom uses, so both sides rotate by identical angles.
        int pairs = _shape.HeadDim / 2;
        var cos = new float[_shape.Context * pairs];
        var sin = new float[_shape.Context * pairs];
        Loom.Training.Layers.RopeTables(_shape.Context, _shape.HeadDim, _shape.RopeBase, cos, sin);
        _cos = tensor(cos, [_shape.Context, pairs]);
        _sin = tensor(sin, [_shape.Context, pairs]);
    }

    public IEnumerable<Parameter> Parameters => _layout.Slots.Select(s => _parameters[s.Name]);
    public IEnumerable<Parameter> Decaying => _layout.Slots.Where(s => s.Decays).Select(s => _parameters[s.Name]);
    public IEnumerable<Parameter> NotDecaying => _layout.Slots.Where(s => !s.Decays).Select(s => _parameters[s.Name]);

    public float[] Gradient(TensorSlot slot) => _parameters[slot.Name].grad!.data<float>().ToArray();
    public float[] Values(TensorSlot slot) => _parameters[slot.Name].data<float>().ToArray();

    public void ZeroGradients()
    {
        foreach (var p in _parameters.Values) p.grad?.zero_();
    }

    /// <summary>
    /// Mean cross-entropy of the batch (a graph to call backward on). With a dropout key, applies the very masks Loom
    /// derives from that key, so dropout's forward and backward are checked too.
    /// </summary>
    public Tensor Loss(int[] tokens, int[] targets, int batch, int seqLen, ulong dropoutKey = 0, float attentionDropout = 0, float residualDropout = 0)
    {
        var s = _shape;
        Tensor P(string name) => _parameters[name];
        using var tokenIds = tensor(tokens.Select(t => (long)t).ToArray(), [batch * seqLen]);
        using var targetIds = tensor(targets.Select(t => (long)t).ToArray(), [batch * seqLen]);
        var x = P("token_embd.weight").index_select(0, tokenIds).view(batch, seqLen, s.Dim);
        var causal = ones(seqLen, seqLen, ScalarType.Bool).triu(1);
        var cos = _cos.narrow(0, 0, seqLen).view(1, seqLen, 1, s.HeadDim / 2);
        var sin = _sin.narrow(0, 0, seqLen).view(1, seqLen, 1, s.HeadDim / 2);
        for (int l = 0; l < s.Layers; l++)
        {
            string b = $"blk.{l}.";
            var h = RmsNorm(x, P(b + "attn_norm.weight"));
            var q = Rope(Mm(h, P(b + "attn_q.weight").t()).view(batch, seqLen, s.Heads, s.HeadDim), cos, sin).transpose(1, 2);
            var k = Rope(Mm(h, P(b + "attn_k.weight").t()).view(batch, seqLen, s.KvHeads, s.HeadDim), cos, sin).transpose(1, 2);
            var v = Mm(h, P(b + "attn_v.weight").t()).view(batch, seqLen, s.KvHeads, s.HeadDim).transpose(1, 2);
            int group = s.Heads / s.KvHeads;
            k = k.repeat_interleave(group, 1);
            v = v.repeat_interleave(group, 1);
            var scores = Mm(q, k.transpose(-2, -1)) * (1.0 / Math.Sqrt(s.HeadDim));
            var probs = scores.masked_fill(causal, float.NegativeInfinity).softmax(-1);
            if (dropoutKey != 0 && attentionDropout > 0)
                probs = probs * MaskTensor(DropoutMask.For(dropoutKey, l, 0, attentionDropout), [batch, s.Heads, seqLen, seqLen]);
            var attention = Mm(probs, v).transpose(1, 2).reshape(batch, seqLen, s.Dim);
            var projection = Mm(attention, P(b + "attn_output.weight").t());
            if (dropoutKey != 0 && residualDropout > 0)
                projection = projection * MaskTensor(DropoutMask.For(dropoutKey, l, 1, residualDropout), [batch, seqLen, s.Dim]);
            x = x + projection;
            var h2 = RmsNorm(x, P(b + "ffn_norm.weight"));
            var gated = nn.functional.silu(Mm(h2, P(b + "ffn_gate.weight").t())) * Mm(h2, P(b + "ffn_up.weight").t());
            var down = Mm(gated, P(b + "ffn_down.weight").t());
            if (dropoutKey != 0 && residualDropout > 0)
                down = down * MaskTensor(DropoutMask.For(dropoutKey, l, 2, residualDropout), [batch, seqLen, s.Dim]);
            x = x + down;
        }
        var final = RmsNorm(x, P("output_norm.weight"));
        var logits = Mm(final, P("token_embd.weight").t()).view(batch * seqLen, s.VocabSize);
        return nn.functional.cross_entropy(logits, targetIds);
    }

    private Tensor Mm(Tensor a, Tensor b) =>
        _bf16 ? a.to(ScalarType.BFloat16).to(ScalarType.Float32).matmul(b.to(ScalarType.BFloat16).to(ScalarType.Float32)) : a.matmul(b);

    private static Tensor MaskTensor(DropoutMask mask, long[] shape)
    {
        var factors = new float[shape.Aggregate(1L, (a, b) => a * b)];
        for (int i = 0; i < factors.Length; i++) factors[i] = mask.Factor(i);
        return tensor(factors, shape);
    }

    private Tensor RmsNorm(Tensor x, Tensor weight) =>
        x * (x.pow(2).mean([-1], keepdim: true) + _shape.NormEpsilon).rsqrt() * weight;

    /// <summary>Rotates adjacent pairs (2i, 2i+1) of each head: llama GGUF's normal RoPE layout.</summary>
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
        foreach (var p in _parameters.Values) p.Dispose();
        _cos.Dispose();
        _sin.Dispose();
    }
}
