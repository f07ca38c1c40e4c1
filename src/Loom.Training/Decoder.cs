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
    private TrainingPrecision _passPrecision;

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
    /// <summary>Threads used by the matrix products, attention and the per-token layers (results do not depend on it).</summary>
    public int Threads { get; set; } = 2;
    /// <summary>
    /// Arithmetic of the matrix products (linear layers, attention, output head): fp32, or bf16 inputs with fp32
    /// accumulation. Weights, gradients and everything outside the products stay fp32 either way.
    /// </summary>
    public TrainingPrecision Precision { get; set; } = TrainingPrecision.Fp32;
    /// <summary>
    /// In bf16 mode, keep the activations that only feed matrix products (the norms' outputs, the attention output, the
    /// SwiGLU product) as bf16 instead of fp32. Results are the same bit for bit, as the products round them to bf16
    /// anyway; off only to check exactly that.
    /// </summary>
    internal bool Bf16Activations { get; set; } = true;
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

    public void ZeroGradients() => Layers.Clear(Gradients, Gradients.Length, Threads);

    /// <summary>
    /// Bytes of the buffers a pass of <paramref name="batch"/> × <paramref name="seqLen"/> tokens holds at the current
    /// <see cref="Precision"/>: the activations kept for the backward pass, the logits and the backward's scratch.
    /// </summary>
    public long ActivationBytes(int batch, int seqLen) => new Workspace(Shape, batch, seqLen, StoresBf16, allocate: false).Bytes;

    private bool StoresBf16 => Precision == TrainingPrecision.Bf16 && Bf16Activations;

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
        var precision = _passPrecision = Precision;
        tokens.CopyTo(w.Tokens);
        if (_hasTargets) targets.CopyTo(w.Targets);

        var p = Parameters;
        var embedding = Layout.TokenEmbedding.Of(p);
        Layers.Gather(p, Layout.TokenEmbedding, w.Tokens, w.Residual[0], n, Threads);

        for (int l = 0; l < s.Layers; l++)
        {
            var slots = Layout.Layers[l];
            var a = w.Layer[l];
            var input = w.Residual[l];
            // Product-only activations are produced in fp32 (into a backward buffer, idle now, when kept as bf16).
            var norm1 = a.Norm1.Producer(w.DNorm);
            Layers.RmsNormForward(input, slots.AttentionNorm.Of(p), norm1, a.InverseRms1, n, s.NormEpsilon, Threads);
            a.Norm1.Keep(norm1, n * s.Dim);
            // Queries, keys and values in one product (their weights are adjacent): one packing of norm1 instead of
            // three, and a wider product; each value is the same chain of multiply-adds as in three products.
            MatMul.Forward(norm1, slots.QueryKeyValue(p), a.Qkv, n, s.Dim, s.QkvDim, Threads, precision);
            Layers.Rope(a.Qkv, s.QkvDim, _ropeCos, _ropeSin, n, seqLen, s.Heads, s.HeadDim, inverse: false, Threads);
            Layers.Rope(a.Qkv.AsSpan(s.Dim), s.QkvDim, _ropeCos, _ropeSin, n, seqLen, s.KvHeads, s.HeadDim, inverse: false, Threads);
            var attentionOut = a.AttentionOut.Producer(w.DAttention);
            _attention.Forward(a.Qkv, a.Probs, attentionOut, batch, seqLen, Mask(l, 0, AttentionDropout), Threads, precision);
            a.AttentionOut.Keep(attentionOut, n * s.Dim);

            var projection = w.Projection.AsSpan(0, n * s.Dim);
            MatMul.Forward(attentionOut, slots.Output.Of(p), projection, n, s.Dim, s.Dim, Threads, precision);
            Layers.Dropout(Mask(l, 1, ResidualDropout), w.Projection, w.Projection, n * s.Dim, Threads);
            Layers.Add(input, w.Projection, a.Middle, n * s.Dim, Threads);

            var norm2 = a.Norm2.Producer(w.DNorm);
            Layers.RmsNormForward(a.Middle, slots.FeedForwardNorm.Of(p), norm2, a.InverseRms2, n, s.NormEpsilon, Threads);
            a.Norm2.Keep(norm2, n * s.Dim);
            MatMul.Forward(norm2, slots.Gate.Of(p), a.Gate, n, s.Dim, s.Hidden, Threads, precision);
            MatMul.Forward(norm2, slots.Up.Of(p), a.Up, n, s.Dim, s.Hidden, Threads, precision);
            var hidden = a.Hidden.Producer(w.DHidden);
            Layers.SwiGluForward(a.Gate, a.Up, hidden, n * s.Hidden, Threads);
            a.Hidden.Keep(hidden, n * s.Hidden);
            MatMul.Forward(hidden, slots.Down.Of(p), projection, n, s.Hidden, s.Dim, Threads, precision);
            Layers.Dropout(Mask(l, 2, ResidualDropout), w.Projection, w.Projection, n * s.Dim, Threads);
            Layers.Add(a.Middle, w.Projection, w.Residual[l + 1], n * s.Dim, Threads);
        }

        var finalNorm = w.FinalNorm.Producer(w.DNorm);
        Layers.RmsNormForward(w.Residual[s.Layers], Layout.OutputNorm.Of(p), finalNorm, w.FinalInverseRms, n, s.NormEpsilon, Threads);
        w.FinalNorm.Keep(finalNorm, n * s.Dim);
        MatMul.Forward(finalNorm, embedding, w.Logits, n, s.Dim, s.VocabSize, Threads, precision);
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
        var precision = _passPrecision;

        // Head: dlogits, then into the (tied) embedding and the final norm.
        Layers.CrossEntropy(w.Logits, w.Targets.AsSpan(0, n), s.VocabSize, lossScale, Threads);
        var dLogits = w.Logits.AsSpan(0, n * s.VocabSize);
        w.FinalNorm.BackwardWeight(dLogits, Layout.TokenEmbedding.Of(g), n, s.Dim, s.VocabSize, Threads, precision);
        MatMul.BackwardInput(dLogits, Layout.TokenEmbedding.Of(p), w.DNorm, n, s.Dim, s.VocabSize, accumulate: false, Threads, precision);
        var dResidual = w.DResidual.AsSpan(0, n * s.Dim);
        Layers.Clear(w.DResidual, n * s.Dim, Threads);
        Layers.RmsNormBackward(w.DNorm, w.Residual[s.Layers], Layout.OutputNorm.Of(p), w.FinalInverseRms, dResidual, Layout.OutputNorm.Of(g), n, Threads);

        for (int l = s.Layers - 1; l >= 0; l--)
        {
            var slots = Layout.Layers[l];
            var a = w.Layer[l];
            var dProjection = w.DProjection.AsSpan(0, n * s.Dim);

            // Feed-forward block: residual[l+1] = middle + dropout(down(swiglu(norm2(middle)))).
            Layers.Dropout(Mask(l, 2, ResidualDropout), w.DResidual, w.DProjection, n * s.Dim, Threads);
            a.Hidden.BackwardWeight(dProjection, slots.Down.Of(g), n, s.Hidden, s.Dim, Threads, precision);
            MatMul.BackwardInput(dProjection, slots.Down.Of(p), w.DHidden, n, s.Hidden, s.Dim, accumulate: false, Threads, precision);
            Layers.SwiGluBackward(w.DHidden, a.Gate, a.Up, w.DGate, w.DUp, n * s.Hidden, Threads);
            a.Norm2.BackwardWeight(w.DGate, slots.Gate.Of(g), n, s.Dim, s.Hidden, Threads, precision);
            a.Norm2.BackwardWeight(w.DUp, slots.Up.Of(g), n, s.Dim, s.Hidden, Threads, precision);
            MatMul.BackwardInput(w.DGate, slots.Gate.Of(p), w.DNorm, n, s.Dim, s.Hidden, accumulate: false, Threads, precision);
            MatMul.BackwardInput(w.DUp, slots.Up.Of(p), w.DNorm, n, s.Dim, s.Hidden, accumulate: true, Threads, precision);
            Layers.RmsNormBackward(w.DNorm, a.Middle, slots.FeedForwardNorm.Of(p), a.InverseRms2, dResidual, slots.FeedForwardNorm.Of(g), n, Threads);

            // Attention block: middle = residual[l] + dropout(wo(attention(rope(q), rope(k), v))).
            Layers.Dropout(Mask(l, 1, ResidualDropout), w.DResidual, w.DProjection, n * s.Dim, Threads);
            a.AttentionOut.BackwardWeight(dProjection, slots.Output.Of(g), n, s.Dim, s.Dim, Threads, precision);
            MatMul.BackwardInput(dProjection, slots.Output.Of(p), w.DAttention, n, s.Dim, s.Dim, accumulate: false, Threads, precision);
            _attention.Backward(w.DAttention, a.Qkv, a.Probs, w.DQkv, _batch, seqLen, Mask(l, 0, AttentionDropout), Threads, precision);
            Layers.Rope(w.DQkv, s.QkvDim, _ropeCos, _ropeSin, n, seqLen, s.Heads, s.HeadDim, inverse: true, Threads);
            Layers.Rope(w.DQkv.AsSpan(s.Dim), s.QkvDim, _ropeCos, _ropeSin, n, seqLen, s.KvHeads, s.HeadDim, inverse: true, Threads);
            a.Norm1.BackwardWeight(w.DQkv, slots.QueryKeyValue(g), n, s.Dim, s.QkvDim, Threads, precision);
            MatMul.BackwardInput(w.DQkv, slots.QueryKeyValue(p), w.DNorm, n, s.Dim, s.QkvDim, accumulate: false, Threads, precision);
            Layers.RmsNormBackward(w.DNorm, w.Residual[l], slots.AttentionNorm.Of(p), a.InverseRms1, dResidual, slots.AttentionNorm.Of(g), n, Threads);
        }

        Layers.ScatterAdd(w.DResidual, w.Tokens, n, g, Layout.TokenEmbedding, Threads);
    }

    private DropoutMask Mask(int layer, int site, float rate) =>
        _dropoutOn ? DropoutMask.For(_dropoutKey, layer, site, rate) : default;

    private Workspace EnsureWorkspace(int batch, int seqLen)
    {
        // A smaller batch (validation's last one, a shorter sequence) reuses the buffers: every pass indexes them by
        // its own batch and sequence length.
        if (_work is null || _work.Batch < batch || _work.SeqLen < seqLen || _work.Bf16 != StoresBf16)
            _work = new Workspace(Shape, Math.Max(batch, _work?.Batch ?? 0), Math.Max(seqLen, _work?.SeqLen ?? 0), StoresBf16, allocate: true);
        return _work;
    }

    /// <summary>
    /// Activations kept for the backward pass and gradient buffers, sized for one batch shape; without allocate it only
    /// counts their <see cref="Bytes"/>.
    /// </summary>
    private sealed class Workspace
    {
        private readonly bool _allocate;

        public Workspace(ModelShape s, int batch, int seqLen, bool bf16, bool allocate)
        {
            _allocate = allocate;
            Batch = batch;
            SeqLen = seqLen;
            Bf16 = bf16;
            long n = (long)batch * seqLen;
            Tokens = Array<int>(n);
            Targets = Array<int>(n);
            Residual = new float[s.Layers + 1][];
            for (int i = 0; i <= s.Layers; i++) Residual[i] = Array<float>(n * s.Dim);
            Layer = new LayerActivations[s.Layers];
            for (int i = 0; i < s.Layers; i++) Layer[i] = new LayerActivations(this, s, n);
            FinalNorm = ProductInput(n * s.Dim);
            FinalInverseRms = Array<float>(n);
            Logits = Array<float>(n * s.VocabSize);
            Projection = Array<float>(n * s.Dim);
            DResidual = Array<float>(n * s.Dim);
            DProjection = Array<float>(n * s.Dim);
            DNorm = Array<float>(n * s.Dim);
            DAttention = Array<float>(n * s.Dim);
            DQkv = Array<float>(n * s.QkvDim);
            DHidden = Array<float>(n * s.Hidden);
            DGate = Array<float>(n * s.Hidden);
            DUp = Array<float>(n * s.Hidden);
        }

        public int Batch { get; }
        public int SeqLen { get; }
        /// <summary>Whether the product-only activations are kept as bf16.</summary>
        public bool Bf16 { get; }
        /// <summary>Bytes of all the buffers.</summary>
        public long Bytes { get; private set; }
        public int[] Tokens, Targets;
        public float[][] Residual;
        public LayerActivations[] Layer;
        public ProductInput FinalNorm;
        public float[] FinalInverseRms, Logits, Projection;
        public float[] DResidual, DProjection, DNorm, DAttention, DQkv, DHidden, DGate, DUp;

        public T[] Array<T>(long length) where T : unmanaged
        {
            if (length > System.Array.MaxLength) throw new ArgumentOutOfRangeException(nameof(length), $"an activation of {length} values is too large");
            Bytes += length * System.Runtime.CompilerServices.Unsafe.SizeOf<T>();
            return _allocate ? new T[length] : [];
        }

        public ProductInput ProductInput(long length) => Bf16 ? new ProductInput(null, Array<ushort>(length)) : new ProductInput(Array<float>(length), null);
    }

    /// <summary>
    /// An activation kept only as the input of matrix products: fp32, or the bf16 bits the products would round it to.
    /// </summary>
    private sealed class ProductInput(float[]? full, ushort[]? half)
    {
        /// <summary>Where its producer writes it in fp32: its own buffer, or the given idle one when kept as bf16.</summary>
        public float[] Producer(float[] idle) => full ?? idle;

        /// <summary>Keeps the first count values the producer wrote.</summary>
        public void Keep(float[] produced, int count)
        {
            if (half is not null) MatMul.ToBf16(produced.AsSpan(0, count), half);
        }

        /// <summary>dw += dyᵀ·this, as <see cref="MatMul.BackwardWeight(ReadOnlySpan{float}, ReadOnlySpan{float}, Span{float}, int, int, int, int, TrainingPrecision)"/>.</summary>
        public void BackwardWeight(ReadOnlySpan<float> dy, Span<float> dw, int tokens, int inputs, int outputs, int threads, TrainingPrecision precision)
        {
            if (half is null) MatMul.BackwardWeight(dy, full, dw, tokens, inputs, outputs, threads, precision);
            else MatMul.BackwardWeight(dy, half, dw, tokens, inputs, outputs, threads);
        }
    }

    private sealed class LayerActivations(Workspace w, ModelShape s, long n)
    {
        public readonly ProductInput Norm1 = w.ProductInput(n * s.Dim);
        public readonly float[] InverseRms1 = w.Array<float>(n);
        public readonly float[] Qkv = w.Array<float>(n * s.QkvDim);
        public readonly float[] Probs = w.Array<float>(n * s.Heads * w.SeqLen);
        public readonly ProductInput AttentionOut = w.ProductInput(n * s.Dim);
        public readonly float[] Middle = w.Array<float>(n * s.Dim);
        public readonly ProductInput Norm2 = w.ProductInput(n * s.Dim);
        public readonly float[] InverseRms2 = w.Array<float>(n);
        public readonly float[] Gate = w.Array<float>(n * s.Hidden);
        public readonly float[] Up = w.Array<float>(n * s.Hidden);
        public readonly ProductInput Hidden = w.ProductInput(n * s.Hidden);
    }
}
