namespace Loom.Inference.Sampling;

/// <summary>
/// Picks the next token from a logits vector with llama.cpp's sampler chain:
/// penalties → top-k → top-p → min-p → temperature → random draw (greedy argmax after the penalties when the
/// temperature is ≤ 0), with llama.cpp's random generator so that a seed draws the same tokens as llama.cpp.
/// All buffers are allocated once for the vocabulary; sampling a token allocates nothing.
/// </summary>
public sealed class Sampler
{
    private readonly SamplerOptions _options;
    private readonly int _vocabSize;

    // Candidate set: _keys[i] is the (transformed) logit of token _ids[i]; only the first _count entries are live.
    private readonly float[] _keys;
    private readonly int[] _ids;
    private int _count;
    // _keys[0.._sortedPrefix) holds the largest candidates in descending order.
    private int _sortedPrefix;

    // Penalty window: a ring of the last PenaltyLastN accepted tokens and how often each token occurs in it.
    private readonly int[] _window;
    private int _windowStart, _windowCount;
    private readonly int[] _occurrences;
    private readonly bool[] _penalized;

    private readonly Mt19937 _rng;

    public Sampler(SamplerOptions options, int vocabSize)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (vocabSize <= 0) throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize, "the vocabulary must hold at least one token");
        _options = options;
        _vocabSize = vocabSize;
        _keys = new float[vocabSize];
        _ids = new int[vocabSize];
        _window = new int[options.PenaltyLastN];
        _occurrences = new int[vocabSize];
        _penalized = new bool[vocabSize];
        _rng = new Mt19937(options.Seed);
    }

    public SamplerOptions Options => _options;

    private bool PenaltiesEnabled => _window.Length > 0 &&
        (_options.RepeatPenalty != 1f || _options.FrequencyPenalty != 0f || _options.PresencePenalty != 0f);

    /// <summary>Records a token (prompt or generated) in the penalty window.</summary>
    public void Accept(int token)
    {
        if ((uint)token >= (uint)_vocabSize) throw new ArgumentOutOfRangeException(nameof(token), token, $"token id outside the vocabulary of {_vocabSize}");
        if (_window.Length == 0) return;
        if (_windowCount == _window.Length)
        {
            _occurrences[_window[_windowStart]]--;
            _window[_windowStart] = token;
            _windowStart = (_windowStart + 1) % _window.Length;
        }
        else
        {
            _window[(_windowStart + _windowCount) % _window.Length] = token;
            _windowCount++;
        }
        _occurrences[token]++;
    }

    public void Accept(ReadOnlySpan<int> tokens)
    {
        foreach (int t in tokens) Accept(t);
    }

    /// <summary>Forgets the penalty window and restarts the random sequence from the seed.</summary>
    public void Reset()
    {
        for (int i = 0; i < _windowCount; i++) _occurrences[_window[(_windowStart + i) % _window.Length]]--;
        _windowStart = _windowCount = 0;
        _rng.Seed(_options.Seed);
    }

    /// <summary>Chooses the next token. Does not <see cref="Accept(int)"/> it.</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        Filter(logits);
        return _options.Temperature <= 0 ? _ids[0] : Draw(_keys.AsSpan(0, _count));
    }

    /// <summary>Runs every stage before the random draw and returns the number of surviving candidates (greedy keeps one).</summary>
    internal int Filter(ReadOnlySpan<float> logits)
    {
        LoadLogits(logits);
        if (_options.Temperature <= 0)
        {
            _ids[0] = ArgMax(_keys);
            _keys[0] = _keys[_ids[0]];
            return _count = 1;
        }
        Truncate();
        return _count;
    }

    internal ReadOnlySpan<int> CandidateIds => _ids.AsSpan(0, _count);
    internal ReadOnlySpan<float> CandidateLogits => _keys.AsSpan(0, _count);

    private void LoadLogits(ReadOnlySpan<float> logits)
    {
        if (logits.Length != _vocabSize)
            throw new ArgumentException($"expected {_vocabSize} logits (the vocabulary size) but got {logits.Length}", nameof(logits));
        logits.CopyTo(_keys);
        if (PenaltiesEnabled) ApplyPenalties();
    }

    // top-k → top-p → min-p → temperature, on the candidate set.
    private void Truncate()
    {
        for (int i = 0; i < _ids.Length; i++) _ids[i] = i;
        _count = _vocabSize;
        _sortedPrefix = 0;

        if (_options.TopK > 0 && _options.TopK < _count)
        {
            EnsureSortedPrefix(_options.TopK);
            _count = _options.TopK;
        }
        if (_options.TopP < 1f) ApplyTopP(_options.TopP);
        if (_options.MinP > 0f) ApplyMinP(_options.MinP);

        var keys = _keys.AsSpan(0, _count);
        float temperature = _options.Temperature;
        for (int i = 0; i < keys.Length; i++) keys[i] /= temperature;
    }

    // Penalties act on the raw vocabulary (candidate i is token i), so they index the logits by token id.
    private void ApplyPenalties()
    {
        float repeat = _options.RepeatPenalty, frequency = _options.FrequencyPenalty, presence = _options.PresencePenalty;
        for (int i = 0; i < _windowCount; i++)
        {
            int token = _window[(_windowStart + i) % _window.Length];
            if (_penalized[token]) continue;
            _penalized[token] = true;
            int count = _occurrences[token];
            ref float logit = ref _keys[token];
            // Dividing a negative logit would make the token more likely, so negative logits are multiplied instead.
            logit = logit <= 0 ? logit * repeat : logit / repeat;
            logit -= count * frequency + presence;
        }
        for (int i = 0; i < _windowCount; i++) _penalized[_window[(_windowStart + i) % _window.Length]] = false;
    }

    private void ApplyTopP(float p)
    {
        float max = MaxKey();
        double total = 0;
        for (int i = 0; i < _count; i++) total += MathF.Exp(_keys[i] - max);
        double target = p * total, cumulative = 0;
        int kept = 0;
        while (kept < _count)
        {
            // Sort only as far as the walk needs: the nucleus is usually a small head of the distribution.
            if (kept == _sortedPrefix) EnsureSortedPrefix(Math.Min(_count, Math.Max(64, 2 * _sortedPrefix)));
            cumulative += MathF.Exp(_keys[kept] - max);
            kept++;
            if (cumulative >= target) break;
        }
        _count = kept;
        _sortedPrefix = Math.Min(_sortedPrefix, _count);
    }

    private void ApplyMinP(float p)
    {
        // Keeping p_i ≥ p·p_max is keeping logit_i ≥ max_logit + ln p.
        float threshold = MaxKey() + MathF.Log(p);
        if (_sortedPrefix >= _count)
        {
            int i = 1;
            while (i < _count && _keys[i] >= threshold) i++;
            _count = _sortedPrefix = i;
            return;
        }
        int kept = 0, keptSorted = 0;
        for (int i = 0; i < _count; i++)
        {
            if (!(_keys[i] >= threshold)) continue;
            if (i < _sortedPrefix) keptSorted++;
            _keys[kept] = _keys[i];
            _ids[kept] = _ids[i];
            kept++;
        }
        // The maximum always passes, so at least one candidate survives (unless every logit is NaN).
        _count = Math.Max(kept, 1);
        _sortedPrefix = keptSorted;
    }

    private float MaxKey()
    {
        if (_sortedPrefix > 0) return _keys[0];
        float max = float.NegativeInfinity;
        for (int i = 0; i < _count; i++) if (_keys[i] > max) max = _keys[i];
        return max;
    }

    // llama.cpp's dist sampler: unnormalised softmax weights (float) summed in double, one uniform draw scaled by the
    // sum, first candidate whose running sum reaches it. A lone candidate is taken without a draw.
    private int Draw(Span<float> keys)
    {
        if (keys.Length == 1) return _ids[0];
        float max = float.NegativeInfinity;
        foreach (float k in keys) if (k > max) max = k;
        double total = 0;
        for (int i = 0; i < keys.Length; i++)
        {
            float w = MathF.Exp(keys[i] - max);
            keys[i] = w;
            total += w;
        }
        double target = total * _rng.NextCanonical(), running = 0;
        for (int i = 0; i < keys.Length; i++)
        {
            running += keys[i];
            if (running >= target) return _ids[i];
        }
        return _ids[keys.Length - 1];
    }

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        float bestValue = values[0];
        for (int i = 1; i < values.Length; i++)
            if (values[i] > bestValue) { bestValue = values[i]; best = i; }
        return best;
    }

    /// <summary>Makes _keys[0..upTo) the largest candidates in descending order (partial selection, then a sort of that head).</summary>
    private void EnsureSortedPrefix(int upTo)
    {
        if (upTo <= _sortedPrefix) return;
        var keys = _keys.AsSpan(_sortedPrefix, _count - _sortedPrefix);
        var ids = _ids.AsSpan(_sortedPrefix, _count - _sortedPrefix);
        int want = upTo - _sortedPrefix;
        if (want < keys.Length) SelectLargest(keys, ids, want);
        keys[..want].Sort(ids[..want], Descending.Instance);
        _sortedPrefix = upTo;
    }

    /// <summary>Quickselect: moves the <paramref name="k"/> largest keys (with their ids) to the front, in no particular order.</summary>
    internal static void SelectLargest(Span<float> keys, Span<int> ids, int k)
    {
        int lo = 0, hi = keys.Length - 1, target = k - 1;
        while (hi - lo > 16)
        {
            int mid = lo + (hi - lo) / 2;
            float pivot = MedianOfThree(keys[lo], keys[mid], keys[hi]);
            int i = lo, j = hi;
            while (i <= j)
            {
                while (i <= hi && keys[i] > pivot) i++;
                while (j >= lo && keys[j] < pivot) j--;
                if (i <= j)
                {
                    (keys[i], keys[j]) = (keys[j], keys[i]);
                    (ids[i], ids[j]) = (ids[j], ids[i]);
                    i++;
                    j--;
                }
            }
            // Now keys[lo..j] ≥ pivot ≥ keys[i..hi] and everything strictly between j and i equals the pivot.
            if (target <= j) hi = j;
            else if (target >= i) lo = i;
            else return;
        }
        // Small range: an insertion sort (descending) settles it.
        for (int a = lo + 1; a <= hi; a++)
        {
            float key = keys[a];
            int id = ids[a], b = a - 1;
            while (b >= lo && keys[b] < key)
            {
                keys[b + 1] = keys[b];
                ids[b + 1] = ids[b];
                b--;
            }
            keys[b + 1] = key;
            ids[b + 1] = id;
        }
    }

    private static float MedianOfThree(float a, float b, float c) =>
        a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);

    // A class instance, not a struct: the sort takes an IComparer, and a struct would be boxed on every call.
    private sealed class Descending : IComparer<float>
    {
        public static readonly Descending Instance = new();
        public int Compare(float x, float y) => y.CompareTo(x);
    }
}
