namespace Loom.Training;

/// <summary>
/// A tokenized corpus split into a training stream and a held-out validation stream (the last fraction of the
/// documents' tokens), cut into windows of context + 1 tokens (inputs and their next-token targets).
/// </summary>
public sealed class TokenDataset
{
    public TokenDataset(int[] train, int[] validation, int vocabSize)
    {
        Train = train;
        Validation = validation;
        VocabSize = vocabSize;
        foreach (int token in train.Concat(validation))
            if ((uint)token >= (uint)vocabSize) throw new InvalidDataException($"token {token} is outside the vocabulary of {vocabSize}");
    }

    public int[] Train { get; }
    public int[] Validation { get; }
    public int VocabSize { get; }

    /// <summary>Tokenizes the documents and holds out <paramref name="validationFraction"/> of the tokens.</summary>
    public static TokenDataset Create(IReadOnlyList<string> documents, ITokenEncoder encoder, double validationFraction)
    {
        if (!(validationFraction > 0 && validationFraction < 1))
            throw new ArgumentOutOfRangeException(nameof(validationFraction), validationFraction, "must be between 0 and 1");
        var tokens = new List<int>();
        foreach (string document in documents) tokens.AddRange(encoder.EncodeDocument(document));
        if (tokens.Count == 0) throw new InvalidDataException("the training data encodes to no tokens");
        int held = (int)Math.Round(tokens.Count * validationFraction);
        var all = tokens.ToArray();
        return new TokenDataset(all[..^held], all[^held..], encoder.VocabSize);
    }

    /// <summary>Number of non-overlapping windows of <paramref name="context"/> + 1 tokens in a stream.</summary>
    public static int WindowCount(int[] stream, int context) => stream.Length <= context ? 0 : (stream.Length - 1) / context;

    /// <summary>Throws a clear error when either split is too short for one window of the context.</summary>
    public void RequireContext(int context)
    {
        if (WindowCount(Train, context) < 1)
            throw new InvalidDataException($"the training split has {Train.Length} tokens, fewer than context {context} + 1: use a shorter context or more data");
        if (WindowCount(Validation, context) < 1)
            throw new InvalidDataException($"the validation split has {Validation.Length} tokens, fewer than context {context} + 1: use a shorter context, a larger validation fraction or more data");
    }

    /// <summary>Window <paramref name="index"/> of a stream: inputs are its first context tokens, targets the next ones.</summary>
    public static void CopyWindow(int[] stream, int index, int context, Span<int> inputs, Span<int> targets)
    {
        int start = index * context;
        stream.AsSpan(start, context).CopyTo(inputs);
        stream.AsSpan(start + 1, context).CopyTo(targets);
    }
}

/// <summary>
/// Hands out training windows in a shuffled order, a new permutation each epoch. Its whole state (epoch, position,
/// the generator's state when the epoch's permutation was drawn) goes into checkpoints.
/// </summary>
public sealed class BatchSampler
{
    private readonly int[] _stream;
    private readonly int _context;
    private int[] _order = [];

    public BatchSampler(int[] stream, int context, ulong seed)
    {
        _stream = stream;
        _context = context;
        WindowCount = TokenDataset.WindowCount(stream, context);
        if (WindowCount < 1) throw new InvalidDataException($"{stream.Length} tokens hold no window of context {context} + 1");
        Restore(new SamplerState(0, 0, seed));
    }

    public int WindowCount { get; }
    public SamplerState State => new(Epoch, Position, EpochSeed);
    public int Epoch { get; private set; }
    public int Position { get; private set; }
    private ulong EpochSeed { get; set; }

    public void Restore(SamplerState state)
    {
        if (state.Position < 0 || state.Position > WindowCount || state.Epoch < 0)
            throw new InvalidDataException($"sampler position {state.Position} of epoch {state.Epoch} does not fit {WindowCount} windows");
        Epoch = state.Epoch;
        Position = state.Position;
        EpochSeed = state.EpochSeed;
        _order = new int[WindowCount];
        for (int i = 0; i < _order.Length; i++) _order[i] = i;
        new DeterministicRandom(EpochSeed).Shuffle(_order.AsSpan());
    }

    /// <summary>Fills batch × context inputs and targets with the next windows.</summary>
    public void Next(int batch, Span<int> inputs, Span<int> targets)
    {
        for (int b = 0; b < batch; b++)
        {
            if (Position == WindowCount)
                Restore(new SamplerState(Epoch + 1, 0, DeterministicRandom.Mix(EpochSeed)));
            TokenDataset.CopyWindow(_stream, _order[Position++], _context, inputs.Slice(b * _context, _context), targets.Slice(b * _context, _context));
        }
    }
}

public readonly record struct SamplerState(int Epoch, int Position, ulong EpochSeed);
