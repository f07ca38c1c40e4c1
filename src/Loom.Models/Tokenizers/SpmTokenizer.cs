using System.Text;

namespace Loom.Models.Tokenizers;

/// <summary>
/// SentencePiece-style tokenizer as llama.cpp's SPM tokenizer runs it: spaces become U+2581, a space is prefixed to text
/// at the start or after a special token, then adjacent symbols (initially single code points) are merged greedily by the
/// score of the merged piece, and symbols left without a vocabulary entry fall back to &lt;0xNN&gt; byte tokens.
/// </summary>
internal sealed class SpmTokenizer : VocabularyTokenizer
{
    private const char SpaceMarker = '\u2581';
    /// <summary>The token for each byte in byte fallback, or -1 when the vocabulary has none.</summary>
    private readonly int[] _byteTokens = new int[256];

    public SpmTokenizer(Vocabulary vocabulary) : base(vocabulary)
    {
        for (int b = 0; b < 256; b++)
        {
            if (Vocab.IdsByText.TryGetValue($"<0x{b:X2}>", out int id)) _byteTokens[b] = id;
            else _byteTokens[b] = b < 0x80 && Vocab.IdsByText.TryGetValue(((char)b).ToString(), out id) ? id : -1;
        }
    }

    private protected override byte[] RenderPiece(int id)
    {
        var attributes = Vocab.Attributes[id];
        string text = Vocab.Texts[id];
        if ((attributes & (TokenAttributes.Unknown | TokenAttributes.Control | TokenAttributes.UserDefined)) != 0) return Encoding.UTF8.GetBytes(text);
        if ((attributes & TokenAttributes.Normal) != 0) return Encoding.UTF8.GetBytes(text.Replace(SpaceMarker, ' '));
        if ((attributes & TokenAttributes.Byte) != 0) return [ParseByteToken(text)];
        return []; // unused and undefined tokens render as nothing, as in llama.cpp
    }

    /// <summary>The byte of a "&lt;0xNN&gt;" token (llama.cpp reads the two hex digits at offset 3).</summary>
    private static byte ParseByteToken(string text)
    {
        int value = 0;
        for (int i = 3; i < Math.Min(5, text.Length); i++)
        {
            int digit = HexDigit(text[i]);
            if (digit < 0) break;
            value = value * 16 + digit;
        }
        return (byte)value;
    }

    private static int HexDigit(char c) => c switch
    {
        >= '0' and <= '9' => c - '0',
        >= 'a' and <= 'f' => c - 'a' + 10,
        >= 'A' and <= 'F' => c - 'A' + 10,
        _ => -1,
    };

    private protected override void EncodeFragments(List<Fragment> fragments, bool addSpecial, List<int> output)
    {
        bool previousWasSpecial = true; // the text start counts as following a special token
        if (addSpecial && Vocab.AddBos) output.Add(RequireSpecial(Vocab.Bos, "BOS"));
        var session = new Session(this);
        foreach (var fragment in fragments)
        {
            if (!fragment.IsText)
            {
                output.Add(fragment.Token);
                previousWasSpecial = true;
                continue;
            }
            var text = new StringBuilder(fragment.Length + 1);
            if (Vocab.AddSpacePrefix && previousWasSpecial) text.Append(' ');
            text.Append(fragment.Span);
            text.Replace(' ', SpaceMarker);
            session.Tokenize(text.ToString(), output);
            previousWasSpecial = false;
        }
        if (addSpecial && Vocab.AddEos) output.Add(RequireSpecial(Vocab.Eos, "EOS"));
    }

    /// <summary>Scratch state for tokenizing text runs; one per Encode call.</summary>
    private sealed class Session(SpmTokenizer owner)
    {
        private struct Symbol { public int Start, Length, Prev, Next; }

        private readonly List<Symbol> _symbols = [];
        // highest score first; equal scores: leftmost first
        private readonly PriorityQueue<(int Left, int Right, int Length), (float Score, int Left)> _queue =
            new(Comparer<(float Score, int Left)>.Create((a, b) => a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Left.CompareTo(b.Left)));

        public void Tokenize(string text, List<int> output)
        {
            _symbols.Clear();
            _queue.Clear();
            for (int offset = 0; offset < text.Length;)
            {
                int length = char.IsHighSurrogate(text[offset]) && offset + 1 < text.Length && char.IsLowSurrogate(text[offset + 1]) ? 2 : 1;
                int index = _symbols.Count;
                _symbols.Add(new Symbol { Start = offset, Length = length, Prev = index - 1, Next = offset + length == text.Length ? -1 : index + 1 });
                offset += length;
            }
            for (int i = 1; i < _symbols.Count; i++) TryAddBigram(text, i - 1, i);

            var symbols = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_symbols);
            while (_queue.TryDequeue(out var bigram, out _))
            {
                ref var left = ref symbols[bigram.Left];
                ref var right = ref symbols[bigram.Right];
                // stale: one side was merged away or grew since this pair was queued
                if (left.Length == 0 || right.Length == 0 || left.Length + right.Length != bigram.Length) continue;
                left.Length += right.Length;
                right.Length = 0;
                left.Next = right.Next;
                if (right.Next >= 0) symbols[right.Next].Prev = bigram.Left;
                TryAddBigram(text, left.Prev, bigram.Left);
                TryAddBigram(text, bigram.Left, left.Next);
            }

            for (int i = 0; i != -1 && _symbols.Count > 0; i = symbols[i].Next)
                Emit(text.AsSpan(symbols[i].Start, symbols[i].Length), output);
        }

        private void TryAddBigram(string text, int left, int right)
        {
            if (left < 0 || right < 0) return;
            int start = _symbols[left].Start, length = _symbols[left].Length + _symbols[right].Length;
            if (!owner.Vocab.IdsBySpan.TryGetValue(text.AsSpan(start, length), out int id)) return;
            _queue.Enqueue((left, right, length), (owner.Vocab.Scores[id], left));
        }

        /// <summary>A final symbol is its vocabulary token, or failing that one byte token per UTF-8 byte.</summary>
        private void Emit(ReadOnlySpan<char> piece, List<int> output)
        {
            if (owner.Vocab.IdsBySpan.TryGetValue(piece, out int id)) { output.Add(id); return; }
            Span<byte> utf8 = stackalloc byte[8];
            int count = Encoding.UTF8.GetBytes(piece, utf8);
            foreach (byte b in utf8[..count])
            {
                int token = owner._byteTokens[b];
                // llama.cpp aborts when a byte has no token; Loom falls back to the unknown token, or explains
                if (token < 0) token = owner.Vocab.Unknown != Vocabulary.None ? owner.Vocab.Unknown
                    : throw new InvalidOperationException($"the text needs byte 0x{b:X2}, but the vocabulary has neither a <0x{b:X2}> token nor an unknown token");
                output.Add(token);
            }
        }
    }
}
