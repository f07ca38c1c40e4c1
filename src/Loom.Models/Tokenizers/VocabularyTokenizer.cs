using System.Text;

namespace Loom.Models.Tokenizers;

/// <summary>What SentencePiece and BPE tokenizers share: special-token handling, ids, and decoding as llama.cpp does it.</summary>
internal abstract class VocabularyTokenizer : Tokenizer
{
    private protected readonly Vocabulary Vocab;
    /// <summary>Each token's bytes when rendered (llama.cpp's cache_token_to_piece, built with special = true).</summary>
    private readonly byte[][] _pieces;

    private protected VocabularyTokenizer(Vocabulary vocabulary)
    {
        Vocab = vocabulary;
        _pieces = new byte[vocabulary.Texts.Length][];
        for (int id = 0; id < _pieces.Length; id++) _pieces[id] = RenderPiece(id);
    }

    public override int VocabSize => Vocab.Texts.Length;
    public override int BosId => Vocab.Bos;
    public override int EosId => Vocab.Eos;
    public override int EotId => Vocab.Eot;
    public override int UnknownId => Vocab.Unknown;
    public override int PaddingId => Vocab.Padding;
    public override bool AddBos => Vocab.AddBos;
    public override bool AddEos => Vocab.AddEos;

    public override string Piece(int id) => Vocab.Texts[CheckId(id)];

    public override TokenAttributes Attributes(int id) => Vocab.Attributes[CheckId(id)];

    public override bool IsEndOfGeneration(int id) => Vocab.EndOfGeneration.Contains(id);

    public override byte[] TokenBytes(int id, bool renderSpecial = false)
    {
        if (!renderSpecial && IsHiddenSpecial(CheckId(id))) return [];
        return (byte[])_pieces[id].Clone();
    }

    /// <summary>The bytes of a token as llama.cpp's token_to_piece renders it with special = true.</summary>
    private protected abstract byte[] RenderPiece(int id);

    /// <summary>Unknown and control tokens render as nothing unless special tokens are rendered.</summary>
    private bool IsHiddenSpecial(int id) => (Vocab.Attributes[id] & (TokenAttributes.Unknown | TokenAttributes.Control)) != 0;

    private int CheckId(int id) =>
        (uint)id < (uint)Vocab.Texts.Length ? id : throw new ArgumentOutOfRangeException(nameof(id), id, $"token id {id} is outside the vocabulary (0..{Vocab.Texts.Length - 1})");

    public override int[] Encode(string text, bool addSpecial, bool parseSpecial = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 4);
        var fragments = text.Length == 0 ? [] : Partition(ReplaceLoneSurrogates(text), parseSpecial);
        EncodeFragments(fragments, addSpecial, output);
        return output.ToArray();
    }

    /// <summary>Tokenizes the fragments (text runs and special tokens) into output, adding BOS/EOS as the tokenizer type does.</summary>
    private protected abstract void EncodeFragments(List<Fragment> fragments, bool addSpecial, List<int> output);

    private protected int RequireSpecial(int id, string name) =>
        id != Vocabulary.None ? id : throw new InvalidOperationException($"the vocabulary asks for a {name} token but defines none");

    /// <summary>A run of raw text (Token = -1) or one special token.</summary>
    private protected readonly record struct Fragment(string Text, int Start, int Length, int Token)
    {
        public bool IsText => Token < 0;
        public ReadOnlySpan<char> Span => Text.AsSpan(Start, Length);
    }

    /// <summary>
    /// Splits text around special tokens as llama.cpp's tokenizer_st_partition does: each special token in turn (longest first)
    /// is cut out of every remaining text run. Without parseSpecial, control and unknown tokens stay text, but user-defined
    /// tokens are still cut out.
    /// </summary>
    private List<Fragment> Partition(string text, bool parseSpecial)
    {
        var fragments = new List<Fragment> { new(text, 0, text.Length, -1) };
        var next = new List<Fragment>();
        foreach (int special in Vocab.SpecialTokens)
        {
            var attributes = Vocab.Attributes[special];
            if (!parseSpecial && (attributes & (TokenAttributes.Control | TokenAttributes.Unknown)) != 0) continue;
            string needle = Vocab.Texts[special];
            if (needle.Length > text.Length) continue;
            next.Clear();
            foreach (var fragment in fragments)
            {
                if (!fragment.IsText) { next.Add(fragment); continue; }
                int start = fragment.Start, end = fragment.Start + fragment.Length;
                while (true)
                {
                    int match = start < end ? text.AsSpan(start, end - start).IndexOf(needle, StringComparison.Ordinal) : -1;
                    if (match < 0)
                    {
                        if (end > start) next.Add(new Fragment(text, start, end - start, -1));
                        break;
                    }
                    match += start;
                    int leftEnd = match;
                    if ((attributes & TokenAttributes.LStrip) != 0)
                        while (leftEnd > start && IsCSpace(text[leftEnd - 1])) leftEnd--;
                    if (leftEnd > start) next.Add(new Fragment(text, start, leftEnd - start, -1));
                    next.Add(new Fragment(text, 0, 0, special));
                    start = match + needle.Length;
                    if ((attributes & TokenAttributes.RStrip) != 0)
                        while (start < end && IsCSpace(text[start])) start++;
                }
            }
            (fragments, next) = (next, fragments);
        }
        return fragments;
    }

    /// <summary>C's isspace in the "C" locale, which llama.cpp uses for the strip flags.</summary>
    private static bool IsCSpace(char c) => c is ' ' or '\t' or '\n' or '\v' or '\f' or '\r';

    /// <summary>llama.cpp reads UTF-8; a lone UTF-16 surrogate has no UTF-8 form, so it becomes U+FFFD as the UTF-8 encoder would make it.</summary>
    private static string ReplaceLoneSurrogates(string text)
    {
        for (int i = 0; i < text.Length; i++)
        {
            if (!char.IsSurrogate(text[i])) continue;
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) { i++; continue; }
            return Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(text));
        }
        return text;
    }

    public override string Decode(ReadOnlySpan<int> ids, bool renderSpecial = false) => Encoding.UTF8.GetString(DecodeBytes(ids, renderSpecial));

    public override byte[] DecodeBytes(ReadOnlySpan<int> ids, bool renderSpecial = false)
    {
        var bytes = new List<byte>(ids.Length * 4);
        bool removeSpace = Vocab.AddSpacePrefix;
        foreach (int id in ids)
        {
            if (renderSpecial || !IsHiddenSpecial(CheckId(id)))
            {
                ReadOnlySpan<byte> piece = _pieces[id];
                if (removeSpace && piece.Length > 0 && piece[0] == (byte)' ') piece = piece[1..];
                bytes.AddRange(piece);
            }
            removeSpace = false; // only the first token's leading space is the one the tokenizer added
        }
        if (Vocab.CleanSpaces) CleanSpaces(bytes);
        return bytes.ToArray();
    }

    /// <summary>llama.cpp's clean_up_tokenization_spaces: " ?" " !" " ." " ," lose the space, " ' " becomes "'", " 's" " 'm" " 're" " 've" lose the space.</summary>
    private static void CleanSpaces(List<byte> text)
    {
        // pass 1: space before ? ! . ,
        int total = text.Count > 0 ? 1 : 0;
        for (int i = 1, n = text.Count; i < n; i++)
        {
            byte x = text[i];
            if (text[i - 1] == ' ' && x is (byte)'?' or (byte)'!' or (byte)'.' or (byte)',') total--;
            text[total++] = x;
        }
        text.RemoveRange(total, text.Count - total);

        // pass 2: a lone apostrophe between spaces
        total = text.Count > 0 ? 1 : 0;
        for (int i = 1, n = text.Count; i < n; i++)
        {
            byte x = text[i];
            if (x == '\'' && i + 1 < n && text[i - 1] == ' ' && text[i + 1] == ' ')
            {
                total--;
                text[++i] = 0; // llama.cpp blanks the following space in place and skips it
            }
            text[total++] = x;
        }
        text.RemoveRange(total, text.Count - total);

        // pass 3: contractions
        total = text.Count > 0 ? 1 : 0;
        for (int i = 1, n = text.Count; i < n; i++)
        {
            byte x = text[i];
            if (text[i - 1] == ' ' && x == '\'' && i + 1 < n)
            {
                byte x1 = text[i + 1];
                if (x1 is (byte)'s' or (byte)'m') total--;
                else if (x1 is not ((byte)'t' or (byte)'d') && i + 2 < n)
                {
                    byte x2 = text[i + 2];
                    if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) total--;
                }
            }
            text[total++] = x;
        }
        text.RemoveRange(total, text.Count - total);
    }
}
