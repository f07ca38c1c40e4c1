using System.Text;
using Loom.Models.Gguf;

namespace Loom.Models.Tokenizers;

/// <summary>
/// Learns a byte-level BPE vocabulary (GPT-2 style) from text: the GPT-2 pre-tokenizer splits the text into words, each
/// word starts as its UTF-8 bytes, and the most frequent adjacent pair (summed over the words, weighted by how often each
/// word occurs) is merged into a new token until the vocabulary is full. The result is written as the tokenizer.*
/// metadata of a GGUF file (tokenizer.ggml.model = gpt2, pre = gpt-2), which Loom's and llama.cpp's BPE tokenizers apply
/// by merge rank.
/// </summary>
public static class BpeTrainer
{
    /// <summary>Special tokens of the default vocabulary: document boundary (BOS and EOS) and the two ChatML markers.</summary>
    public static readonly IReadOnlyList<string> DefaultSpecialTokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

    /// <summary>
    /// Trains a vocabulary of at most <paramref name="vocabSize"/> tokens: the special tokens first, then the 256 bytes,
    /// then one token per merge. Training stops early when no pair occurs twice. Occurrences of the special tokens in
    /// the text are cut out before counting, so no merge spans them. Deterministic: ties go to the pair of lower ids.
    /// </summary>
    public static BpeVocabulary Train(IEnumerable<string> documents, int vocabSize, IReadOnlyList<string>? specialTokens = null,
        Action<int, int>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(documents);
        specialTokens ??= DefaultSpecialTokens;
        if (specialTokens.Any(string.IsNullOrEmpty)) throw new ArgumentException("special tokens must not be empty");
        if (specialTokens.Distinct(StringComparer.Ordinal).Count() != specialTokens.Count) throw new ArgumentException("special tokens must be distinct");
        int baseSize = specialTokens.Count + 256;
        if (vocabSize <= baseSize)
            throw new ArgumentException($"a vocabulary of {vocabSize} has no room for merges: {specialTokens.Count} special tokens and 256 bytes take {baseSize}");

        var words = CountWords(documents, specialTokens);
        if (words.Count == 0) throw new InvalidDataException("the training text holds no words to learn a vocabulary from");

        // Symbols are token ids: bytes are baseSize - 256 + b, merges follow.
        int byteBase = specialTokens.Count;
        var symbols = new int[words.Count][];
        var counts = new long[words.Count];
        int w = 0;
        foreach (var (word, count) in words)
        {
            var bytes = Encoding.Latin1.GetBytes(word); // the key holds the word's UTF-8 bytes as Latin-1 characters
            symbols[w] = Array.ConvertAll(bytes, b => byteBase + b);
            counts[w++] = count;
        }

        var pairs = new PairStatistics(symbols, counts);
        var texts = new List<byte[]>(vocabSize);
        for (int b = 0; b < 256; b++) texts.Add([(byte)b]);
        var merges = new List<(int Left, int Right)>();
        while (baseSize + merges.Count < vocabSize && pairs.TakeMostFrequent() is var (left, right, frequency) && frequency >= 2)
        {
            int merged = baseSize + merges.Count;
            merges.Add((left, right));
            texts.Add([.. texts[left - byteBase], .. texts[right - byteBase]]);
            pairs.Merge(left, right, merged);
            progress?.Invoke(merges.Count, vocabSize - baseSize);
        }
        return new BpeVocabulary(specialTokens, texts, merges, byteBase);
    }

    /// <summary>Word (UTF-8 bytes as a Latin-1 string) → occurrences, in first-seen order.</summary>
    private static Dictionary<string, long> CountWords(IEnumerable<string> documents, IReadOnlyList<string> specialTokens)
    {
        var words = new Dictionary<string, long>(StringComparer.Ordinal);
        var lookup = words.GetAlternateLookup<ReadOnlySpan<char>>();
        var pre = PreTokenizer.Gpt2;
        var word = new List<char>();
        Span<byte> utf8 = stackalloc byte[4];
        foreach (string document in documents)
        {
            foreach (string segment in document.Split(specialTokens.ToArray(), StringSplitOptions.None))
            {
                if (segment.Length == 0) continue;
                int[] codepoints = segment.EnumerateRunes().Select(r => r.Value).ToArray();
                int start = 0;
                foreach (int length in pre.Split(codepoints))
                {
                    word.Clear();
                    for (int i = start; i < start + length; i++)
                    {
                        int n = new Rune(codepoints[i]).EncodeToUtf8(utf8);
                        foreach (byte b in utf8[..n]) word.Add((char)b);
                    }
                    start += length;
                    if (word.Count == 0) continue;
                    var key = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(word);
                    lookup[key] = lookup.TryGetValue(key, out long seen) ? seen + 1 : 1;
                }
            }
        }
        return words;
    }

    /// <summary>
    /// Weighted counts of adjacent symbol pairs over all words, the words each pair occurs in, and a max-heap of pairs by
    /// count (stale heap entries are skipped when popped: every count change pushes a fresh entry).
    /// </summary>
    private sealed class PairStatistics
    {
        private readonly int[][] _symbols;
        private readonly long[] _counts;
        private readonly Dictionary<long, long> _pairCounts = new();
        private readonly Dictionary<long, List<int>> _wordsWithPair = new();
        private readonly PriorityQueue<long, (long Count, long Key)> _heap = new(Comparer<(long Count, long Key)>.Create(
            (a, b) => a.Count != b.Count ? b.Count.CompareTo(a.Count) : a.Key.CompareTo(b.Key)));
        private readonly HashSet<long> _changed = new();

        public PairStatistics(int[][] symbols, long[] counts)
        {
            _symbols = symbols;
            _counts = counts;
            for (int w = 0; w < symbols.Length; w++)
            {
                AddPairs(w, +1);
                foreach (long key in DistinctPairs(symbols[w])) WordsWith(key).Add(w);
            }
            foreach (var (key, count) in _pairCounts) _heap.Enqueue(key, (count, key));
            _changed.Clear();
        }

        private static long Key(int left, int right) => ((long)left << 32) | (uint)right;

        private List<int> WordsWith(long key)
        {
            if (!_wordsWithPair.TryGetValue(key, out var list)) _wordsWithPair[key] = list = [];
            return list;
        }

        private static IEnumerable<long> DistinctPairs(int[] word)
        {
            var seen = new HashSet<long>();
            for (int i = 0; i + 1 < word.Length; i++)
                if (seen.Add(Key(word[i], word[i + 1]))) yield return Key(word[i], word[i + 1]);
        }

        private void AddPairs(int w, int sign)
        {
            int[] word = _symbols[w];
            for (int i = 0; i + 1 < word.Length; i++)
            {
                long key = Key(word[i], word[i + 1]);
                _pairCounts[key] = _pairCounts.GetValueOrDefault(key) + sign * _counts[w];
                _changed.Add(key);
            }
        }

        public (int Left, int Right, long Count)? TakeMostFrequent()
        {
            while (_heap.TryDequeue(out long key, out var entry))
            {
                if (_pairCounts.GetValueOrDefault(key) != entry.Count || entry.Count <= 0) continue; // stale
                return ((int)(key >> 32), (int)(uint)key, entry.Count);
            }
            return null;
        }

        /// <summary>Replaces every left-right occurrence (left to right, non-overlapping) in the words that hold it.</summary>
        public void Merge(int left, int right, int merged)
        {
            long mergedKey = Key(left, right);
            if (!_wordsWithPair.Remove(mergedKey, out var holders)) return;
            foreach (int w in holders)
            {
                int[] word = _symbols[w];
                if (!Contains(word, left, right)) continue; // an earlier merge in this word removed the pair
                AddPairs(w, -1);
                var next = new List<int>(word.Length);
                for (int i = 0; i < word.Length; i++)
                {
                    if (i + 1 < word.Length && word[i] == left && word[i + 1] == right) { next.Add(merged); i++; }
                    else next.Add(word[i]);
                }
                _symbols[w] = word = next.ToArray();
                AddPairs(w, +1);
                for (int i = 0; i + 1 < word.Length; i++)
                    if (word[i] == merged || word[i + 1] == merged) AddHolder(Key(word[i], word[i + 1]), w);
            }
            _pairCounts.Remove(mergedKey);
            foreach (long key in _changed)
                if (_pairCounts.TryGetValue(key, out long count))
                {
                    if (count > 0) _heap.Enqueue(key, (count, key));
                    else _pairCounts.Remove(key);
                }
            _changed.Clear();
        }

        private void AddHolder(long key, int w)
        {
            var list = WordsWith(key);
            if (list.Count == 0 || list[^1] != w) list.Add(w); // skips the usual repeat; any other is harmless (Merge skips words without the pair)
        }

        private static bool Contains(int[] word, int left, int right)
        {
            for (int i = 0; i + 1 < word.Length; i++)
                if (word[i] == left && word[i + 1] == right) return true;
            return false;
        }
    }
}

/// <summary>A trained byte-level BPE vocabulary: special tokens, the 256 bytes, then merged tokens in merge order.</summary>
public sealed class BpeVocabulary
{
    private readonly IReadOnlyList<string> _specialTokens;
    private readonly List<byte[]> _texts;
    private readonly List<(int Left, int Right)> _merges;
    private readonly int _byteBase;

    internal BpeVocabulary(IReadOnlyList<string> specialTokens, List<byte[]> texts, List<(int, int)> merges, int byteBase)
    {
        _specialTokens = specialTokens;
        _texts = texts;
        _merges = merges;
        _byteBase = byteBase;
    }

    public int VocabSize => _specialTokens.Count + _texts.Count;
    public int MergeCount => _merges.Count;
    /// <summary>The first special token marks document starts and ends (BOS = EOS), like GPT-2's &lt;|endoftext|&gt;.</summary>
    public string BoundaryToken => _specialTokens[0];

    /// <summary>Token strings as GGUF stores them: special tokens verbatim, the others in GPT-2's byte-to-character mapping.</summary>
    public string[] TokenStrings() =>
        [.. _specialTokens, .. _texts.Select(t => Gpt2ByteMapping.Map(t))];

    /// <summary>
    /// Adds the tokenizer.* metadata: the vocabulary, merges, token types (specials are control tokens), BOS = EOS = the
    /// first special token (added at the start of every text), an end-of-turn token and a ChatML chat template when
    /// the ChatML markers are among the specials.
    /// </summary>
    public void DescribeInGguf(GgufWriter writer)
    {
        writer.Add("tokenizer.ggml.model", "gpt2");
        writer.Add("tokenizer.ggml.pre", "gpt-2");
        writer.Add("tokenizer.ggml.tokens", TokenStrings());
        writer.Add("tokenizer.ggml.token_type",
            [.. Enumerable.Repeat(GgufTokenType.Control, _specialTokens.Count), .. Enumerable.Repeat(GgufTokenType.Normal, _texts.Count)]);
        writer.Add("tokenizer.ggml.merges", _merges.Select(m => Gpt2ByteMapping.Map(_texts[m.Left - _byteBase]) + " " + Gpt2ByteMapping.Map(_texts[m.Right - _byteBase])).ToArray());
        writer.Add("tokenizer.ggml.bos_token_id", 0u);
        writer.Add("tokenizer.ggml.eos_token_id", 0u);
        writer.Add("tokenizer.ggml.add_bos_token", true);
        writer.Add("tokenizer.ggml.add_eos_token", false);
        int start = IndexOf("<|im_start|>"), end = IndexOf("<|im_end|>");
        if (start >= 0 && end >= 0)
        {
            writer.Add("tokenizer.ggml.eot_token_id", (uint)end);
            writer.Add("tokenizer.chat_template", ChatMlTemplate);
        }
    }

    /// <summary>Writes a GGUF file holding only this tokenizer (no tensors); `loom train --tokenizer-from` reads it.</summary>
    public void Save(string path)
    {
        var writer = new GgufWriter();
        writer.Add("general.name", "loom-bpe-tokenizer");
        DescribeInGguf(writer);
        writer.WriteTo(path);
    }

    private int IndexOf(string special)
    {
        for (int i = 0; i < _specialTokens.Count; i++)
            if (_specialTokens[i] == special) return i;
        return -1;
    }

    /// <summary>The plain ChatML template (no default system message), as llama.cpp and Loom recognise it.</summary>
    public const string ChatMlTemplate =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
}
