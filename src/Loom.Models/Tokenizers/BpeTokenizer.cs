using System.Runtime.InteropServices;
using System.Text;
using Loom.Models.Gguf;

namespace Loom.Models.Tokenizers;

/// <summary>
/// Byte-level BPE as llama.cpp's BPE tokenizer runs it: the pre-tokenizer named by tokenizer.ggml.pre splits text into
/// words, each word's UTF-8 bytes start as one symbol per byte (GPT-2's byte-to-unicode mapping names them), and the
/// adjacent pair with the lowest merge rank is merged until no ranked pair is left.
/// </summary>
internal sealed class BpeTokenizer : VocabularyTokenizer
{
    private readonly PreTokenizer _preTokenizer;
    private readonly bool _ignoreMerges;
    /// <summary>Pieces (vocabulary tokens and merge operands/results) keyed by their bytes as a Latin-1 string; ids below VocabSize are token ids.</summary>
    private readonly Dictionary<string, int> _pieceIds;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _pieceIdsBySpan;
    /// <summary>(left piece, right piece) -> (rank, merged piece).</summary>
    private readonly Dictionary<long, (int Rank, int Merged)> _merges;
    private readonly int[] _bytePieces = new int[256];

    public BpeTokenizer(GgufFile file) : this(file, PresetFor(file)) { }

    private BpeTokenizer(GgufFile file, BpePreset preset) : base(new Vocabulary(file, VocabularyKind.BytePairEncoding, preset))
    {
        _preTokenizer = preset.PreTokenizer;
        _ignoreMerges = preset.IgnoreMerges;

        int vocabSize = Vocab.Texts.Length;
        _pieceIds = new Dictionary<string, int>(vocabSize, StringComparer.Ordinal);
        for (int id = 0; id < vocabSize; id++)
            if (MappedTextToBytes(Vocab.Texts[id]) is { } bytes) _pieceIds[bytes] = id;
        _pieceIdsBySpan = _pieceIds.GetAlternateLookup<ReadOnlySpan<char>>();

        var merges = file.GetArray<string>("tokenizer.ggml.merges")
            ?? throw new InvalidDataException($"{file.Path}: tokenizer.ggml.merges is missing, which a 'gpt2' tokenizer needs");
        _merges = new Dictionary<long, (int, int)>(merges.Length);
        int nextPiece = vocabSize;
        int PieceId(string bytes)
        {
            if (!_pieceIds.TryGetValue(bytes, out int id)) _pieceIds[bytes] = id = nextPiece++;
            return id;
        }
        for (int rank = 0; rank < merges.Length; rank++)
        {
            string merge = merges[rank];
            int split = merge.Length > 1 ? merge.IndexOf(' ', 1) : -1; // as llama.cpp: the first space after the first character
            if (split < 0) continue;
            string? left = MappedTextToBytes(merge[..split]), right = MappedTextToBytes(merge[(split + 1)..]);
            if (left is null || right is null) continue; // names a character outside the byte mapping: no word can contain it
            int leftId = PieceId(left), rightId = PieceId(right);
            _merges.TryAdd(PairKey(leftId, rightId), (rank, PieceId(left + right))); // the first rank of a duplicated merge wins
        }
        for (int b = 0; b < 256; b++) _bytePieces[b] = _pieceIds.GetValueOrDefault(((char)b).ToString(), -1);
    }

    private static long PairKey(int left, int right) => ((long)left << 32) | (uint)right;

    /// <summary>The bytes a GPT-2-mapped string stands for, as a Latin-1 string, or null if it has an unmapped character.</summary>
    private static string? MappedTextToBytes(string text)
    {
        var bytes = new StringBuilder(text.Length);
        foreach (var rune in text.EnumerateRunes())
        {
            int b = Gpt2ByteMapping.ByteOf(rune.Value);
            if (b < 0) return null;
            bytes.Append((char)b);
        }
        return bytes.ToString();
    }

    /// <summary>tokenizer.ggml.pre -> pre-tokenizer and flags, following llama.cpp's llama_vocab::load.</summary>
    private static BpePreset PresetFor(GgufFile file)
    {
        string pre = file.GetString("tokenizer.ggml.pre") ?? "";
        return pre switch
        {
            "" or "default" => new(PreTokenizer.Default),
            "llama3" or "llama-v3" or "llama-bpe" or "falcon3" or "falcon-h1" or "pixtral" or "midm-2.0" or "lfm2"
                => new(PreTokenizer.Llama3, IgnoreMerges: true, AddBos: true),
            "dbrx" or "smaug-bpe" => new(PreTokenizer.Llama3),
            "glm4" or "chatglm-bpe" => new(PreTokenizer.Llama3, NoBos: true),
            "deepseek-llm" => new(PreTokenizer.DeepSeekLlm, CleanSpaces: false),
            "deepseek-coder" => new(PreTokenizer.DeepSeekCoder, CleanSpaces: false),
            "deepseek-v3" or "hunyuan-dense" => new(PreTokenizer.DeepSeek3, CleanSpaces: false),
            "falcon" => new(PreTokenizer.Falcon),
            "starcoder" or "refact" or "codeshell" or "exaone" or "minerva-7b" => new(PreTokenizer.StarCoder),
            "command-r" or "smollm" => new(PreTokenizer.StarCoder, CleanSpaces: false),
            "gpt-2" or "phi-2" or "jina-es" or "jina-de" or "gigachat" or "jina-v2-es" or "jina-v2-de" or "a.x-4.0" or "mellum"
                or "jina-v1-en" or "jina-v2-code" or "roberta-bpe" or "exaone4" or "mpt" or "olmo" or "jais" => new(PreTokenizer.Gpt2),
            "trillion" or "granite-docling" => new(PreTokenizer.Gpt2, CleanSpaces: false),
            "qwen2" or "deepseek-r1-qwen" or "kormo" or "hunyuan" or "grok-2" => new(PreTokenizer.Qwen2, CleanSpaces: false),
            "stablelm2" or "megrez" => new(PreTokenizer.Qwen2),
            "poro-chat" => new(PreTokenizer.Bloom, CleanSpaces: false),
            "bloom" or "gpt3-finnish" => new(PreTokenizer.Bloom),
            "viking" => new(PreTokenizer.Viking, CleanSpaces: false),
            "bailingmoe" or "bailingmoe2" or "llada-moe" => new(PreTokenizer.BailingMoe, CleanSpaces: false),
            "seed-coder" => new(PreTokenizer.SeedCoder, CleanSpaces: false),
            _ => throw new NotSupportedException($"{file.Path}: BPE pre-tokenizer '{pre}' (tokenizer.ggml.pre) is not supported"),
        };
    }

    private protected override byte[] RenderPiece(int id)
    {
        var attributes = Vocab.Attributes[id];
        string text = Vocab.Texts[id];
        if ((attributes & (TokenAttributes.Unknown | TokenAttributes.Control | TokenAttributes.UserDefined)) != 0) return Encoding.UTF8.GetBytes(text);
        if ((attributes & TokenAttributes.Normal) == 0) return []; // byte, unused and undefined tokens render as nothing
        var bytes = new List<byte>(text.Length);
        Span<byte> utf8 = stackalloc byte[4];
        foreach (var rune in text.EnumerateRunes())
        {
            int b = Gpt2ByteMapping.ByteOf(rune.Value);
            if (b >= 0) { bytes.Add((byte)b); continue; }
            // llama.cpp's llama_decode_text marks characters outside the mapping like this
            int n = rune.EncodeToUtf8(utf8);
            var marker = new StringBuilder("[UNK_BYTE_0x");
            foreach (byte u in utf8[..n]) marker.Append(u.ToString("x2"));
            marker.Append(text).Append(']');
            bytes.AddRange(Encoding.UTF8.GetBytes(marker.ToString()));
        }
        return bytes.ToArray();
    }

    private protected override void EncodeFragments(List<Fragment> fragments, bool addSpecial, List<int> output)
    {
        if (addSpecial && Vocab.AddBos) output.Add(RequireSpecial(Vocab.Bos, "BOS"));
        var session = new Session(this);
        foreach (var fragment in fragments)
        {
            if (fragment.IsText) session.Tokenize(fragment.Span, output);
            else output.Add(fragment.Token);
        }
        if (addSpecial && Vocab.AddEos) output.Add(RequireSpecial(Vocab.Eos, "EOS"));
    }

    /// <summary>Scratch state for tokenizing text runs; one per Encode call.</summary>
    private sealed class Session(BpeTokenizer owner)
    {
        private struct Symbol { public int Start, Length, Piece, Prev, Next; }

        private readonly List<Symbol> _symbols = [];
        private readonly List<int> _codepoints = [];
        private readonly StringBuilder _word = new();
        // lowest rank first; equal ranks: leftmost first
        private readonly PriorityQueue<(int Left, int Right, int LeftPiece, int RightPiece, int Merged), (int Rank, int Left)> _queue = new();

        public void Tokenize(ReadOnlySpan<char> text, List<int> output)
        {
            _codepoints.Clear();
            foreach (var rune in text.EnumerateRunes()) _codepoints.Add(rune.Value);
            var codepoints = _codepoints.ToArray();
            int start = 0;
            Span<byte> utf8 = stackalloc byte[4];
            foreach (int length in owner._preTokenizer.Split(codepoints))
            {
                // the word's UTF-8 bytes, one char per byte
                _word.Clear();
                for (int i = start; i < start + length; i++)
                {
                    int n = new Rune(codepoints[i]).EncodeToUtf8(utf8);
                    foreach (byte b in utf8[..n]) _word.Append((char)b);
                }
                start += length;
                if (_word.Length > 0) TokenizeWord(_word.ToString(), output);
            }
        }

        private void TokenizeWord(string word, List<int> output)
        {
            if (owner._ignoreMerges && owner._pieceIds.TryGetValue(word, out int whole) && whole < owner.VocabSize)
            {
                output.Add(whole);
                return;
            }

            _symbols.Clear();
            _queue.Clear();
            for (int i = 0; i < word.Length; i++)
                _symbols.Add(new Symbol { Start = i, Length = 1, Piece = owner._bytePieces[word[i]], Prev = i - 1, Next = i + 1 == word.Length ? -1 : i + 1 });
            for (int i = 1; i < _symbols.Count; i++) TryAddPair(i - 1, i);

            var symbols = CollectionsMarshal.AsSpan(_symbols);
            while (_queue.TryDequeue(out var pair, out _))
            {
                ref var left = ref symbols[pair.Left];
                ref var right = ref symbols[pair.Right];
                // stale: either side changed since the pair was queued
                if (left.Length == 0 || right.Length == 0 || left.Piece != pair.LeftPiece || right.Piece != pair.RightPiece) continue;
                left.Length += right.Length;
                left.Piece = pair.Merged;
                right.Length = 0;
                left.Next = right.Next;
                if (right.Next >= 0) symbols[right.Next].Prev = pair.Left;
                TryAddPair(left.Prev, pair.Left);
                TryAddPair(pair.Left, left.Next);
            }

            for (int i = 0; i != -1; i = symbols[i].Next)
            {
                ref var symbol = ref symbols[i];
                if (symbol.Piece >= 0 && symbol.Piece < owner.VocabSize) { output.Add(symbol.Piece); continue; }
                // no such token: llama.cpp looks up each byte of the piece's mapped text on its own, which finds only printable ASCII
                foreach (char b in word.AsSpan(symbol.Start, symbol.Length))
                {
                    char mapped = Gpt2ByteMapping.ByteToChar[b];
                    if (mapped < 0x80 && owner.Vocab.IdsByText.TryGetValue(mapped.ToString(), out int id)) output.Add(id);
                }
            }
        }

        private void TryAddPair(int left, int right)
        {
            if (left < 0 || right < 0) return;
            int leftPiece = _symbols[left].Piece, rightPiece = _symbols[right].Piece;
            if (leftPiece < 0 || rightPiece < 0) return;
            if (!owner._merges.TryGetValue(PairKey(leftPiece, rightPiece), out var merge)) return;
            _queue.Enqueue((left, right, leftPiece, rightPiece, merge.Merged), (merge.Rank, left));
        }
    }
}
