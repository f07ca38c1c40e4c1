using System.Text;
using Loom.Models.Gguf;

namespace Loom.Models.Tokenizers;

internal enum VocabularyKind { SentencePiece, BytePairEncoding }

/// <summary>The BPE settings llama.cpp derives from tokenizer.ggml.pre.</summary>
internal sealed record BpePreset(PreTokenizer PreTokenizer, bool CleanSpaces = true, bool IgnoreMerges = false, bool AddBos = false, bool NoBos = false);

/// <summary>
/// Token strings, attributes, scores and special ids read from GGUF metadata, with llama.cpp's defaults and its
/// adjustments (end-of-generation tokens found by their text, special-token partition order, per-model strip flags).
/// Everything is computed once here; tokenizing only reads it.
/// </summary>
internal sealed class Vocabulary
{
    public const int None = -1;
    private const string KeyPrefix = "tokenizer.ggml.";

    public string[] Texts { get; }
    public float[] Scores { get; }
    public TokenAttributes[] Attributes { get; }
    /// <summary>Token text to id (for duplicated texts the last id wins, as in llama.cpp's token_to_id).</summary>
    public Dictionary<string, int> IdsByText { get; }
    public Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> IdsBySpan { get; }

    public int Bos { get; } = None;
    public int Eos { get; } = None;
    public int Eot { get; } = None;
    public int Eom { get; } = None;
    public int Unknown { get; } = None;
    public int Padding { get; } = None;
    public bool AddBos { get; }
    public bool AddEos { get; }
    public bool AddSpacePrefix { get; }
    public bool CleanSpaces { get; }
    public HashSet<int> EndOfGeneration { get; } = [];

    /// <summary>Control, user-defined and unknown tokens, longest text (in UTF-8 bytes) first: the order text is split around them.</summary>
    public int[] SpecialTokens { get; }

    public Vocabulary(GgufFile file, VocabularyKind kind, BpePreset? bpe = null)
    {
        var tokens = file.GetArray<string>(KeyPrefix + "tokens")
            ?? throw new InvalidDataException($"{file.Path}: {KeyPrefix}tokens is missing");
        if (tokens.Length == 0) throw new InvalidDataException($"{file.Path}: {KeyPrefix}tokens is empty");
        int n = tokens.Length;

        var scores = ReadFloats(file, KeyPrefix + "scores", n);
        var types = ReadInts(file, KeyPrefix + "token_type", n);

        Texts = new string[n];
        Scores = scores ?? new float[n];
        Attributes = new TokenAttributes[n];
        IdsByText = new Dictionary<string, int>(n, StringComparer.Ordinal);
        for (int i = 0; i < n; i++)
        {
            string text = string.IsNullOrEmpty(tokens[i]) ? $"[EMPTY_{i}]" : tokens[i];
            Texts[i] = text;
            IdsByText[text] = i;
            Attributes[i] = types is null ? TokenAttributes.Normal : GgufTokenType.ToAttributes(types[i]);
        }
        IdsBySpan = IdsByText.GetAlternateLookup<ReadOnlySpan<char>>();

        // defaults per tokenizer type, then the metadata flags
        if (kind == VocabularyKind.SentencePiece)
        {
            Bos = 1; Eos = 2; Unknown = 0;
            AddSpacePrefix = true; CleanSpaces = false; AddBos = true; AddEos = false;
        }
        else
        {
            bpe ??= new BpePreset(PreTokenizer.Default);
            Bos = 11; Eos = 11;
            AddSpacePrefix = false; CleanSpaces = bpe.CleanSpaces; AddBos = bpe.AddBos; AddEos = false;
            if (bpe.NoBos) Bos = None;
        }
        AddSpacePrefix = file.GetBool(KeyPrefix + "add_space_prefix") ?? AddSpacePrefix;

        int fimPre = None, fimSuf = None, fimMid = None, fimPad = None, fimRep = None, fimSep = None;
        int Id(string key, int fallback)
        {
            long? value = file.Find(KeyPrefix + key) is null ? null : file.GetInteger(KeyPrefix + key);
            return value is >= 0 && value < n ? (int)value.Value : fallback; // llama.cpp keeps the default for out-of-range ids
        }
        Bos = Id("bos_token_id", Bos);
        Eos = Id("eos_token_id", Eos);
        Eot = Id("eot_token_id", Eot);
        Eom = Id("eom_token_id", Eom);
        Unknown = Id("unknown_token_id", Unknown);
        Padding = Id("padding_token_id", Padding);
        fimPre = Id("fim_pre_token_id", fimPre);
        fimSuf = Id("fim_suf_token_id", fimSuf);
        fimMid = Id("fim_mid_token_id", fimMid);
        fimPad = Id("fim_pad_token_id", fimPad);
        fimRep = Id("fim_rep_token_id", fimRep);
        fimSep = Id("fim_sep_token_id", fimSep);
        fimPre = Id("prefix_token_id", fimPre);
        fimSuf = Id("suffix_token_id", fimSuf);
        fimMid = Id("middle_token_id", fimMid);
        AddBos = file.GetBool(KeyPrefix + "add_bos_token") ?? AddBos;
        AddEos = file.GetBool(KeyPrefix + "add_eos_token") ?? AddEos;

        // llama.cpp finds end-of-turn and fill-in-the-middle tokens by their text and makes them control tokens. Where several
        // texts are present it takes whichever its hash map yields first; Loom takes the earliest in each list, which picks
        // what the lists intend (<|eot_id|> over <|endoftext|>, <|end|> over <|endoftext|> for Phi-3, as llama.cpp ends up doing).
        Eot = FindByText(Eot, "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
            "<｜end▁of▁sentence｜>", "<end_of_utterance>");
        Eom = FindByText(Eom, "<|eom_id|>");
        fimPre = FindByText(fimPre, "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>");
        fimSuf = FindByText(fimSuf, "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>");
        fimMid = FindByText(fimMid, "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>");
        fimPad = FindByText(fimPad, "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>");
        fimRep = FindByText(fimRep, "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>");
        fimSep = FindByText(fimSep, "<|file_sep|>");

        foreach (int id in new[] { fimPad, fimRep, fimSep })
            if (id != None) EndOfGeneration.Add(id);
        foreach (var (text, id) in IdsByText)
        {
            if (text is "<|eot_id|>" or "<|im_end|>" or "<|end|>" or "<|return|>" or "<|call|>" or "<end_of_turn>" or "<|endoftext|>"
                or "<|eom_id|>" or "<EOT>" or "_<EOT>" or "<|end_of_text|>" or "<end_of_utterance>" or "</s>" or "<eos>" or "[EOS]"
                or "<turn|>" or "<｜end▁of▁sentence｜>")
            {
                EndOfGeneration.Add(id);
                MakeControl(id);
            }
        }
        // gpt-oss renders these even when special tokens are not rendered
        foreach (string text in (string[])["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"])
            if (IdsByText.TryGetValue(text, out int id)) Attributes[id] = TokenAttributes.UserDefined;
        foreach (int id in new[] { Eos, Eot, Eom })
            if (id != None) EndOfGeneration.Add(id);
        // the o200k_harmony vocabulary ends a turn with <|return|> or <|call|>, not <|end|>
        int harmonyEnd = EndOfGeneration.FirstOrDefault(id => Texts[id] == "<|end|>", None);
        if (harmonyEnd != None && EndOfGeneration.Any(id => Texts[id] == "<|return|>") && EndOfGeneration.Any(id => Texts[id] == "<|call|>"))
        {
            EndOfGeneration.Remove(harmonyEnd);
            Attributes[harmonyEnd] = TokenAttributes.UserDefined;
        }

        SpecialTokens = Enumerable.Range(0, n)
            .Where(id => (Attributes[id] & (TokenAttributes.Control | TokenAttributes.UserDefined | TokenAttributes.Unknown)) != 0)
            .OrderByDescending(id => Encoding.UTF8.GetByteCount(Texts[id])) // stable: equal lengths keep id order
            .ToArray();

        ApplyModelSpecificAttributes(file);
    }

    /// <summary>The id set in metadata, else the first of the texts the vocabulary has (made a control token), else none.</summary>
    private int FindByText(int id, params string[] texts)
    {
        if (id != None) return id;
        foreach (string text in texts)
            if (IdsByText.TryGetValue(text, out int found)) return MakeControl(found);
        return None;
    }

    /// <summary>Adds the control attribute (llama.cpp of LLamaSharp 0.30 keeps the others, e.g. Normal | Control).</summary>
    private int MakeControl(int id)
    {
        Attributes[id] |= TokenAttributes.Control;
        return id;
    }

    /// <summary>Strip flags llama.cpp sets by model or pre-tokenizer name (GGUF files do not carry them).</summary>
    private void ApplyModelSpecificAttributes(GgufFile file)
    {
        string name = (file.GetString("general.name") ?? "").ToLowerInvariant();
        string pre = file.GetString(KeyPrefix + "pre") ?? "";
        string architecture = file.GetString("general.architecture") ?? "";
        if (pre.Contains("jina-v2-de") || pre.Contains("jina-v2-es") || pre.Contains("jina-v2-code")
            || architecture.Contains("nomic-bert-moe") || architecture.Contains("jina-bert-v3"))
        {
            if (IdsByText.TryGetValue("<mask>", out int mask)) Attributes[mask] |= TokenAttributes.LStrip;
        }
        else if (name.Contains("phi-3") || name.Contains("phi3"))
        {
            foreach (int id in SpecialTokens) Attributes[id] |= TokenAttributes.RStrip;
            SetFlag("</s>", TokenAttributes.RStrip, true);
            foreach (string text in (string[])["<unk>", "<s>", "<|endoftext|>"]) SetFlag(text, TokenAttributes.RStrip, false);
        }

        void SetFlag(string text, TokenAttributes flag, bool value)
        {
            if (!IdsByText.TryGetValue(text, out int id)) return;
            Attributes[id] = value ? Attributes[id] | flag : Attributes[id] & ~flag;
        }
    }

    private static float[]? ReadFloats(GgufFile file, string key, int n)
    {
        var value = file.Find(key)?.Value;
        if (value is null) return null;
        var floats = value as float[] ?? throw new InvalidDataException($"{file.Path}: {key} should be an array of float32 but is {value.GetType().Name}");
        if (floats.Length != n) throw new InvalidDataException($"{file.Path}: {key} has {floats.Length} entries for {n} tokens");
        return floats;
    }

    private static int[]? ReadInts(GgufFile file, string key, int n)
    {
        var value = file.Find(key)?.Value;
        if (value is null) return null;
        int[] ints = value switch
        {
            int[] a => a,
            uint[] a => Array.ConvertAll(a, v => unchecked((int)v)),
            short[] a => Array.ConvertAll(a, v => (int)v),
            ushort[] a => Array.ConvertAll(a, v => (int)v),
            sbyte[] a => Array.ConvertAll(a, v => (int)v),
            byte[] a => Array.ConvertAll(a, v => (int)v),
            _ => throw new InvalidDataException($"{file.Path}: {key} should be an array of integers but is {value.GetType().Name}"),
        };
        if (ints.Length != n) throw new InvalidDataException($"{file.Path}: {key} has {ints.Length} entries for {n} tokens");
        return ints;
    }
}
