namespace Loom.Training;

/// <summary>
/// A trainable Llama-style decoder: token embedding, per layer RMSNorm → causal GQA attention with RoPE → residual,
/// RMSNorm → SwiGLU → residual, final RMSNorm and an output head tied to the embedding. <see cref="Forward"/> keeps
/// the activations that <see cref="Backward"/> needs; gradients accumulate into <see cref="Gradients"/> until
/// <see cref="ZeroGradients"/>.
/// </summary>
public sealed class Decoder
{
    private readonly Attention _attention;
    private readonly float[] _ropeCos, _ropeSin;
    private Workspace? _work;
    private int _batch, _seqLen;
    private bool _hasTargets;
    private ulong _dropoutKey;
    private bool _dropoutOn;

    public Decoder(ModelShape shape)
    {
        Layout = new ParameterLayout(shape);
        Shape = shape;
        Parameters = new float[Layout.Count];
        Gradients = new float[Layout.Count];
        _attention = new Attention(shape);
        int pairs = shape.HeadDim / 2;
        _ropeCos = new float[shape.Context * pairs];
        _ropeSin = new float[shape.Context * pairs];
        Layers.RopeTables(shape.Context, shape.HeadDim, shape.RopeBase, _ropeCos, _ropeSin);
    }

    public ModelShape Shape { get; }
    public ParameterLayout Layout { get; }
    public float[] Parameters { get; }
    public float[] Gradients { get; }
    /// <summary>Threads used by the matrix products and attention (results do not depend on it).</summary>
    public int Threads { get; set; } = 2;
    /// <summary>
    /// Arithmetic of the matrix products (linear layers, attention, output head): fp32, or bf16 inputs with fp32
    /// accumulation. Weights, gradients and everything outside the products stay fp32 either way.
    /// </summary>
    public TrainingPrecision Precision { get; set; } = TrainingPrecision.Fp32;
    /// <summary>Dropout on the attention probabilities (training passes only).</summary>
    public float AttentionDropout { get; set; }
    /// <summary>Dropout on each block's output before it is added to the residual stream (training passes only).</summary>
    public float ResidualDropout { get; set; }

    /// <summary>
    /// Initializes weights as GPT-2/llama.c do: N(0, 0.02), with the two projections into the residual stream scaled
    /// by 1/√(2·layers); norm gains 1.
    /// </summary>
    public void Initialize(ulong seed)
    {
        var random = new DeterministicRandom(seed);
        float residualStd = 0.02f / MathF.Sqrt(2f * Shape.Layers);
        foreach (var slot in Layout.Slots)
        {
            var values = slot.Of(Parameters);
            if (!slot.Decays) { values.Fill(1f); continue; }
            float std = slot.Name.EndsWith("attn_output.weight") || slot.Name.EndsWith("ffn_down.weight") ? residualStd : 0.02f;
            for (int i = 0; i < values.Length; i++) values[i] = (float)random.NextGaussian() * std;
        }
    }

    public void ZeroGradients() => Array.Clear(Gradients);

    /// <summary>
    /// Runs <paramref name="batch"/> sequences of <paramref name="seqLen"/> tokens (row-major in <paramref name="tokens"/>).
    /// Returns the mean cross-entropy against <paramref name="targets"/>, or NaN when targets is empty (logits only, see
    /// <see cref="Logits"/>). A non-zero <paramref name="dropoutKey"/> makes this a training pass with dropout masks
    /// derived from that key.
    /// </summary>
    public double Forward(ReadOnlySpan<int> tokens, ReadOnlySpan<int> targets, int batch, int seqLen, ulong dropoutKey = 0)
    {
        if (batch < 1 || seqLen < 1 || seqLen > Shape.Context)
            throw new ArgumentOutOfRangeException(nameof(seqLen), $"batch {batch} × sequence {seqLen} must be positive with sequence ≤ context {Shape.Context}");
        int n = batch * seqLen;
        if (tokens.Length != n) throw new ArgumentException($"{tokens.Length} tokens given for {batch} × {seqLen}", nameof(tokens));
        if (!targets.IsEmpty && targets.Length != n) throw new ArgumentException($"{targets.Length} targets given for {batch} × {seqLen}", nameof(targets));
        foreach (int token in tokens)
            if ((uint)token >= (uint)Shape.VocabSize) throw new ArgumentOutOfRangeException(nameof(tokens), token, $"token outside the vocabulary of {Shape.VocabSize}");

        var s = Shape;
        var w = EnsureWorkspace(batch, seqLen);
        _batch = batch;
        _seqLen = seqLen;
        _hasTargets = !targets.IsEmpty;
        _dropoutKey = dropoutKey;
        _dropoutOn = dropoutKey != 0 && (AttentionDropout > 0 || ResidualDropout > 0);
        tokens.CopyTo(w.Tokens);
        if (_hasTargets) targets.CopyTo(w.Targets);

        var p = Parameters;
        var embedding = Layout.TokenEmbedding.Of(p);
        for (int t = 0; t < n; t++)
            embedding.Slice(tokens[t] * s.Dim, s.Dim).CopyTo(w.Residual[0].AsSpan(t * s.Dim, s.Dim));

        for (int l = 0; l < s.Layers; l++)
        {
            var slots = Layout.Layers[l];
            var a = w.Layer[l];
            var input = w.Residual[l];
            Layers.RmsNormForward(input, slots.AttentionNorm.Of(p), a.Norm1, a.InverseRms1, n, s.NormEpsilon);
            MatMul.Forward(a.Norm1, slots.Query.Of(p), a.Q, n, s.Dim, s.Dim, Threads, Precision);
            MatMul.Forward(a.Norm1, slots.Key.Of(p), a.K, n, s.Dim, s.KvDim, Threads, Precision);
            MatMul.Forward(a.Norm1, slots.Value.Of(p), a.V, n, s.Dim, s.KvDim, Threads, Precision);
            Layers.Rope(a.Q, _ropeCos, _ropeSin, n, seqLen, s.Heads, s.HeadDim, inverse: false);
            Layers.Rope(a.K, _ropeCos, _ropeSin, n, seqLen, s.KvHeads, s.HeadDim, inverse: false);
            _attention.Forward(a.Q, a.K, a.V, a.Probs, a.AttentionOut, batch, seqLen, Mask(l, 0, AttentionDropout), Threads, Precision);

            var projection = w.Projection.AsSpan(0, n * s.Dim);
            MatMul.Forward(a.AttentionOut, slots.Output.Of(p), projection, n, s.Dim, s.Dim, Threads, Precision);
            Mask(l, 1, ResidualDropout).Apply(projection);
            AddTo(input, projection, a.Middle);

            Layers.RmsNormForward(a.Middle, slots.FeedForwardNorm.Of(p), a.Norm2, a.InverseRms2, n, s.NormEpsilon);
            MatMul.Forward(a.Norm2, slots.Gate.Of(p), a.Gate, n, s.Dim, s.Hidden, Threads, Precision);
            MatMul.Forward(a.Norm2, slots.Up.Of(p), a.Up, n, s.Dim, s.Hidden, Threads, Precision);
            Layers.SwiGluForward(a.Gate, a.Up, a.Hidden, n * s.Hidden, Threads);
            MatMul.Forward(a.Hidden, slots.Down.Of(p), projection, n, s.Hidden, s.Dim, Threads, Precision);
            Mask(l, 2, ResidualDropout).Apply(projection);
            AddTo(a.Middle, projection, w.Residual[l + 1]);
        }

        Layers.RmsNormForward(w.Residual[s.Layers], Layout.OutputNorm.Of(p), w.FinalNorm, w.FinalInverseRms, n, s.NormEpsilon);
        MatMul.Forward(w.FinalNorm, embedding, w.Logits, n, s.Dim, s.VocabSize, Threads, Precision);
        if (!_hasTargets) return double.NaN;
        return Layers.CrossEntropy(w.Logits, targets, s.VocabSize, gradientScale: null, Threads);
    }

    /// <summary>Logits [batch·seqLen, vocab] of the last <see cref="Forward"/> (overwritten by <see cref="Backward"/>).</summary>
    public ReadOnlySpan<float> Logits => _work is null ? default : _work.Logits.AsSpan(0, _batch * _seqLen * Shape.VocabSize);

    /// <summary>
    /// Adds the gradient of (<paramref name="lossScale"/> × the last forward's mean loss) to <see cref="Gradients"/>;
    /// gradient accumulation over k micro-batches uses lossScale = 1/k.
    /// </summary>
    public void Backward(float lossScale = 1f)
    {
        if (_work is null || !_hasTargets) throw new InvalidOperationException("Backward needs a Forward with targets first");
        var s = Shape;
        var w = _work;
        var p = Parameters;
        var g = Gradients;
        int n = _batch * _seqLen;
        int seqLen = _seqLen;

        // Head: dlogits, then into the (tied) embedding and the final norm.
        Layers.CrossEntropy(w.Logits, w.Targets.AsSpan(0, n), s.VocabSize, lossScale, Threads);
        var dLogits = w.Logits.AsSpan(0, n * s.VocabSize);
        MatMul.BackwardWeight(dLogits, w.FinalNorm, Layout.TokenEmbedding.Of(g), n, s.Dim, s.VocabSize, Threads, Precision);
        MatMul.BackwardInput(dLogits, Layout.TokenEmbedding.Of(p), w.DNorm, n, s.Dim, s.VocabSize, accumulate: false, Threads, Precision);
        var dResidual = w.DResidual.AsSpan(0, n * s.Dim);
        dResidual.Clear();
        Layers.RmsNormBackward(w.DNorm, w.Residual[s.Layers], Layout.OutputNorm.Of(p), w.FinalInverseRms, dResidual, Layout.OutputNorm.Of(g), w.Scratch, n);

        for (int l = s.Layers - 1; l >= 0; l--)
        {
            var slots = Layout.Layers[l];
            var a = w.Layer[l];
            var dProjection = w.DProjection.AsSpan(0, n * s.Dim);

            // Feed-forward block: residual[l+1] = middle + dropout(down(swiglu(norm2(middle)))).
            dResidual.CopyTo(dProjection);
            Mask(l, 2, ResidualDropout).Apply(dProjection);
            MatMul.BackwardWeight(dProjection, a.Hidden, slots.Down.Of(g), n, s.Hidden, s.Dim, Threads, Precision);
            MatMul.BackwardInput(dProjection, slots.Down.Of(p), w.DHidden, n, s.Hidden, s.Dim, accumulate: false, Threads, Precision);
            Layers.SwiGluBackward(w.DHidden, a.Gate, a.Up, w.DGate, w.DUp, n * s.Hidden, Threads);
            MatMul.BackwardWeight(w.DGate, a.Norm2, slots.Gate.Of(g), n, s.Dim, s.Hidden, Threads, Precision);
            MatMul.BackwardWeight(w.DUp, a.Norm2, slots.Up.Of(g), n, s.Dim, s.Hidden, Threads, Precision);
            MatMul.BackwardInput(w.DGate, slots.Gate.Of(p), w.DNorm, n, s.Dim, s.Hidden, accumulate: false, Threads, Precision);
            MatMul.BackwardInput(w.DUp, slots.Up.Of(p), w.DNorm, n, s.Dim, s.Hidden, accumulate: true, Threads, Precision);
            Layers.RmsNormBackward(w.DNorm, a.Middle, slots.FeedForwardNorm.Of(p), a.InverseRms2, dResidual, slots.FeedForwardNorm.Of(g), w.Scratch, n);

            // Attention block: middle = residual[l] + dropout(wo(attention(rope(q), rope(k), v))).
            dResidual.CopyTo(dProjection);
            Mask(l, 1, ResidualDropout).Apply(dProjection);
            MatMul.BackwardWeight(dProjection, a.AttentionOut, slots.Output.Of(g), n, s.Dim, s.Dim, Threads, Precision);
            MatMul.BackwardInput(dProjection, slots.Output.Of(p), w.DAttention, n, s.Dim, s.Dim, accumulate: false, Threads, Precision);
            _attention.Backward(w.DAttention, a.Q, a.K, a.V, a.Probs, w.DQ, w.DK, w.DV, _batch, seqLen, Mask(l, 0, AttentionDropout), Threads, Precision);
            Layers.Rope(w.DQ, _ropeCos, _ropeSin, n, seqLen, s.Heads, s.HeadDim, inverse: true);
            Layers.Rope(w.DK, _ropeCos, _ropeSin, n, seqLen, s.KvHeads, s.HeadDim, inverse: true);
            MatMul.BackwardWeight(w.DQ, a.Norm1, slots.Query.Of(g), n, s.Dim, s.Dim, Threads, Precision);
            MatMul.BackwardWeight(w.DK, a.Norm1, slots.Key.Of(g), n, s.Dim, s.KvDim, Threads, Precision);
            MatMul.BackwardWeight(w.DV, a.Norm1, slots.Value.Of(g), n, s.Dim, s.KvDim, Threads, Precision);
            MatMul.BackwardInput(w.DQ, slots.Query.Of(p), w.DNorm, n, s.Dim, s.Dim, accumulate: false, Threads, Precision);
            MatMul.BackwardInput(w.DK, slots.Key.Of(p), w.DNorm, n, s.Dim, s.KvDim, accumulate: true, Threads, Precision);
            MatMul.BackwardInput(w.DV, slots.Value.Of(p), w.DNorm, n, s.Dim, s.KvDim, accumulate: true, Threads, Precision);
            Layers.RmsNormBackward(w.DNorm, w.Residual[l], slots.AttentionNorm.Of(p), a.InverseRms1, dResidual, slots.AttentionNorm.Of(g), w.Scratch, n);
        }

        var dEmbedding = Layout.TokenEmbedding.Of(g);
        for (int t = 0; t < n; t++)
        {
            var row = dEmbedding.Slice(w.Tokens[t] * s.Dim, s.Dim);
            System.Numerics.Tensors.TensorPrimitives.Add(row, dResidual.Slice(t * s.Dim, s.Dim), row);
        }
    }

    private DropoutMask Mask(int layer, int site, float rate) =>
        _dropoutOn ? DropoutMask.For(_dropoutKey, layer, site, rate) : default;

    /// <summary>sum = x + y over y's length (the rows of this batch).</summary>
    private static void AddTo(ReadOnlySpan<float> x, ReadOnlySpan<float> y, Span<float> sum) =>
        System.Numerics.Tensors.TensorPrimitives.Add(x[..y.Length], y, sum);

    private Workspace EnsureWorkspace(int batch, int seqLen)
    {
        // A smaller batch (validation's last one, a shorter sequence) reuses the buffers: every pass indexes them by
        // its own batch and sequence length.
        if (_work is null || _work.Batch < batch || _work.SeqLen < seqLen)
            _work = new Workspace(Shape, Math.Max(batch, _work?.Batch ?? 0), Math.Max(seqLen, _work?.SeqLen ?? 0));
        return _work;
    }

    /// <summary>Activations kept for the backward pass and gradient buffers, sized for one batch shape.</summary>
    private sealed class Workspace
    {
        public Workspace(ModelShape s, int batch, int seqLen)
        {
            Batch = batch;
            SeqLen = seqLen;
            int n = batch * seqLen;
            Tokens = new int[n];
            Targets = new int[n];
            Residual = new float[s.Layers + 1][];
            for (int i = 0; i <= s.Layers; i++) Residual[i] = new float[n * s.Dim];
            Layer = new LayerActivations[s.Layers];
            for (int i = 0; i < s.Layers; i++) Layer[i] = new LayerActivations(s, batch, seqLen);
            FinalNorm = new float[n * s.Dim];
            FinalInverseRms = new float[n];
            Logits = new float[n * s.VocabSize];
            Projection = new float[n * s.Dim];
            DResidual = new float[n * s.Dim];
            DProjection = new float[n * s.Dim];
            DNorm = new float[n * s.Dim];
            DAttention = new float[n * s.Dim];
            DQ = new float[n * s.Dim];
            DK = new float[n * s.KvDim];
            DV = new float[n * s.KvDim];
            DHidden = new float[n * s.Hidden];
            DGate = new float[n * s.Hidden];
            DUp = new float[n * s.Hidden];
            Scratch = new float[s.Dim];
        }

        public int Batch { get; }
        public int SeqLen { get; }
        public int[] Tokens, Targets;
        public float[][] Residual;
        public LayerActivations[] Layer;
        public float[] FinalNorm, FinalInverseRms, Logits, Projection;
        public float[] DResidual, DProjection, DNorm, DAttention, DQ, DK, DV, DHidden, DGate, DUp;
        public float[] Scratch;
    }

    private sealed class LayerActivations(ModelShape s, int batch, int seqLen)
    {
        public readonly float[] Norm1 = new float[batch * seqLen * s.Dim];
        public readonly float[] InverseRms1 = new float[batch * seqLen];
        public readonly float[] Q = new float[batch * seqLen * s.Dim];
        public readonly float[] K = new float[batch * seqLen * s.KvDim];
        public readonly float[] V = new float[batch * seqLen * s.KvDim];
        public readonly float[] Probs = new float[(long)batch * s.Heads * seqLen * seqLen];
        public readonly float[] AttentionOut = new float[batch * seqLen * s.Dim];
        public readonly float[] Middle = new float[batch * seqLen * s.Dim];
        public readonly float[] Norm2 = new float[batch * seqLen * s.Dim];
        public readonly float[] InverseRms2 = new float[batch * seqLen];
        public readonly float[] Gate = new float[batch * seqLen * s.Hidden];
        public readonly float[] Up = new float[batch * seqLen * s.Hidden];
        public readonly float[] Hidden = new float[batch * seqLen * s.Hidden];
    }
}
