using System.IO.Compression;
using System.Reflection;
using System.Text;
using Loom.Models.Gguf;

namespace Loom.Tests.Conformance;

/// <summary>llama.cpp's token types (tokenizer.ggml.token_type), which match SentencePiece's piece types.</summary>
public enum TokenType
{
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// <summary>A vocabulary in the shape GGUF stores it (tokenizer.ggml.*).</summary>
public sealed record Vocabulary(
    string Name,
    string Model,
    string? Pre,
    string[] Tokens,
    float[]? Scores,
    TokenType[] Types,
    string[]? Merges,
    int BosId,
    int EosId,
    int? UnknownId,
    bool AddBos,
    bool AddEos)
{
    public int Count => Tokens.Length;

    public void WriteTo(GgufWriter writer)
    {
        writer.Add("tokenizer.ggml.model", Model);
        if (Pre is not null) writer.Add("tokenizer.ggml.pre", Pre);
        writer.Add("tokenizer.ggml.tokens", Tokens);
        if (Scores is not null) writer.Add("tokenizer.ggml.scores", Scores);
        writer.Add("tokenizer.ggml.token_type", Types.Select(t => (int)t).ToArray());
        if (Merges is not null) writer.Add("tokenizer.ggml.merges", Merges);
        writer.Add("tokenizer.ggml.bos_token_id", (uint)BosId);
        writer.Add("tokenizer.ggml.eos_token_id", (uint)EosId);
        if (UnknownId is { } unk) writer.Add("tokenizer.ggml.unknown_token_id", (uint)unk);
        writer.Add("tokenizer.ggml.add_bos_token", AddBos);
        writer.Add("tokenizer.ggml.add_eos_token", AddEos);
    }

    public int IdOf(string token) => Array.IndexOf(Tokens, token) is var id and >= 0 ? id : throw new KeyNotFoundException($"'{token}' is not in the {Name} vocabulary");
}

/// <summary>Real vocabularies converted the way llama.cpp's conversion scripts convert them.</summary>
public static class Vocabularies
{
    private static readonly Lazy<Vocabulary> LlamaSpmVocab = new(() => FromSentencePiece(SharedData.PathTo("vocab/llama2-tokenizer.model")));
    private static readonly Lazy<Vocabulary> Gpt2Vocab = new(BuildGpt2);
    private static readonly Lazy<Vocabulary> Llama3Vocab = new(BuildLlama3);
    private static readonly Lazy<Vocabulary> QwenVocab = new(BuildQwen);

    /// <summary>Llama 2's SentencePiece vocabulary (32000 pieces).</summary>
    public static Vocabulary LlamaSpm => LlamaSpmVocab.Value;
    /// <summary>GPT-2's byte-level BPE (r50k_base plus &lt;|endoftext|&gt;), pre-tokenizer "gpt-2".</summary>
    public static Vocabulary Gpt2 => Gpt2Vocab.Value;
    /// <summary>cl100k_base with Llama-3's special tokens appended, pre-tokenizer "llama-bpe".</summary>
    public static Vocabulary Llama3 => Llama3Vocab.Value;
    /// <summary>cl100k_base with Qwen's chat tokens appended, pre-tokenizer "qwen2" (digits split one by one).</summary>
    public static Vocabulary Qwen => QwenVocab.Value;

    public static Vocabulary ByName(string name) => name switch
    {
        "llama-spm" => LlamaSpm,
        "gpt2" => Gpt2,
        "llama-bpe" => Llama3,
        "qwen2" => Qwen,
        _ => throw new ArgumentException($"unknown vocabulary '{name}'"),
    };

    // ---- SentencePiece -------------------------------------------------------------------------------------------

    /// <summary>Reads a SentencePiece ModelProto: pieces (field 1) and the trainer's special ids (field 2).</summary>
    public static Vocabulary FromSentencePiece(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var tokens = new List<string>();
        var scores = new List<float>();
        var types = new List<TokenType>();
        // TrainerSpec defaults: unk 0, bos 1, eos 2.
        int unk = 0, bos = 1, eos = 2;
        var model = new ProtoReader(bytes, path);
        while (model.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2)
            {
                var piece = model.Message();
                string text = "";
                float score = 0;
                var type = TokenType.Normal;
                while (piece.Next(out int f, out int w))
                {
                    if (f == 1 && w == 2) text = Encoding.UTF8.GetString(piece.Bytes());
                    else if (f == 2 && w == 5) score = BitConverter.Int32BitsToSingle((int)piece.Fixed32());
                    else if (f == 3 && w == 0) type = (TokenType)(int)piece.Varint();
                    else piece.Skip(w);
                }
                if (!Enum.IsDefined(type)) throw new InvalidDataException($"{path}: piece '{text}' has unknown type {(int)type}");
                tokens.Add(text);
                scores.Add(score);
                types.Add(type);
            }
            else if (field == 2 && wire == 2)
            {
                var trainer = model.Message();
                while (trainer.Next(out int f, out int w))
                {
                    if (w == 0 && f is 40 or 41 or 42)
                    {
                        int id = (int)trainer.Varint();
                        if (f == 40) unk = id; else if (f == 41) bos = id; else eos = id;
                    }
                    else trainer.Skip(w);
                }
            }
            else model.Skip(wire);
        }
        if (tokens.Count == 0) throw new InvalidDataException($"{path}: no pieces found; is this a SentencePiece model?");
        return new Vocabulary("llama-spm", "llama", "default", [.. tokens], [.. scores], [.. types], null, bos, eos, unk, AddBos: true, AddEos: false);
    }

    /// <summary>Minimal protobuf wire-format reader over a byte range.</summary>
    private ref struct ProtoReader(ReadOnlySpan<byte> data, string path)
    {
        private readonly ReadOnlySpan<byte> _data = data;
        private int _pos;

        public bool Next(out int field, out int wire)
        {
            field = wire = 0;
            if (_pos >= _data.Length) return false;
            ulong key = Varint();
            field = (int)(key >> 3);
            wire = (int)(key & 7);
            return true;
        }

        public ulong Varint()
        {
            ulong value = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= _data.Length) throw new InvalidDataException($"{path}: truncated varint");
                byte b = _data[_pos++];
                value |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80) return value;
            }
            throw new InvalidDataException($"{path}: varint longer than 10 bytes");
        }

        public uint Fixed32()
        {
            var v = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
            return v;
        }

        public ReadOnlySpan<byte> Bytes() => Take(checked((int)Varint()));

        public ProtoReader Message() => new(Bytes(), path);

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: Take(8); break;
                case 2: Bytes(); break;
                case 5: Take(4); break;
                default: throw new InvalidDataException($"{path}: unsupported protobuf wire type {wire}");
            }
        }

        private ReadOnlySpan<byte> Take(int n)
        {
            if (n < 0 || _pos + n > _data.Length) throw new InvalidDataException($"{path}: field runs past the end of its message");
            var s = _data.Slice(_pos, n);
            _pos += n;
            return s;
        }
    }

    // ---- byte-level BPE from tiktoken ------------------------------------------------------------------------------

    private static Vocabulary BuildGpt2()
    {
        var ranks = LoadTiktoken("Microsoft.ML.Tokenizers.Data.R50kBase", "r50k_base.tiktoken.deflate");
        return FromTiktoken("gpt2", "gpt-2", ranks, ["<|endoftext|>"], bos: "<|endoftext|>", eos: "<|endoftext|>", addBos: false);
    }

    private static Vocabulary BuildLlama3()
    {
        var ranks = LoadTiktoken("Microsoft.ML.Tokenizers.Data.Cl100kBase", "cl100k_base.tiktoken.deflate");
        string[] specials =
        [
            "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
            "<|finetune_right_pad_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
        ];
        return FromTiktoken("llama-bpe", "llama-bpe", ranks, specials, bos: "<|begin_of_text|>", eos: "<|end_of_text|>", addBos: true);
    }

    private static Vocabulary BuildQwen()
    {
        var ranks = LoadTiktoken("Microsoft.ML.Tokenizers.Data.Cl100kBase", "cl100k_base.tiktoken.deflate");
        return FromTiktoken("qwen2", "qwen2", ranks, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos: "<|endoftext|>", eos: "<|im_end|>", addBos: false);
    }

    /// <summary>
    /// Reads a tiktoken table embedded, deflated, in a Microsoft.ML.Tokenizers data assembly: an optional
    /// "Capacity: N" line, then one token per line as base64 bytes, optionally followed by its rank (otherwise the
    /// rank is the line's index).
    /// </summary>
    public static byte[][] LoadTiktoken(string assemblyName, string resourceSuffix)
    {
        var assembly = Assembly.Load(assemblyName);
        var resource = assembly.GetManifestResourceNames().SingleOrDefault(n => n.EndsWith(resourceSuffix, StringComparison.Ordinal))
            ?? throw new InvalidDataException($"{assemblyName} has no resource ending in {resourceSuffix} (it has: {string.Join(", ", assembly.GetManifestResourceNames())})");
        using var stream = new DeflateStream(assembly.GetManifestResourceStream(resource)!, CompressionMode.Decompress);
        using var reader = new StreamReader(stream, Encoding.ASCII);
        var byRank = new List<byte[]?>();
        int nextRank = 0;
        while (reader.ReadLine() is { } line)
        {
            if (line.Length == 0 || line.StartsWith("Capacity:", StringComparison.Ordinal)) continue;
            int space = line.IndexOf(' ');
            var bytes = Convert.FromBase64String(space < 0 ? line : line[..space]);
            int rank = space < 0 ? nextRank : int.Parse(line.AsSpan(space + 1), System.Globalization.CultureInfo.InvariantCulture);
            nextRank = rank + 1;
            while (byRank.Count <= rank) byRank.Add(null);
            if (byRank[rank] is not null) throw new InvalidDataException($"{resource}: rank {rank} appears twice");
            byRank[rank] = bytes;
        }
        int missing = byRank.FindIndex(b => b is null);
        if (missing >= 0) throw new InvalidDataException($"{resource}: rank {missing} is missing; ranks are expected to be contiguous");
        if (byRank.Count < 256) throw new InvalidDataException($"{resource}: only {byRank.Count} tokens, fewer than the 256 single bytes");
        return byRank.ToArray()!;
    }

    /// <summary>
    /// Converts tiktoken ranks to a GGUF BPE vocabulary: token ids are ranks, token text is GPT-2's byte-to-unicode
    /// form, and the merge list is recovered from the ranks (each multi-byte token is the merge of the two parts BPE
    /// reaches when only lower-ranked merges are allowed), as the Hugging Face tiktoken conversion does.
    /// </summary>
    public static Vocabulary FromTiktoken(string name, string pre, byte[][] byRank, string[] specials, string bos, string eos, bool addBos)
    {
        var rankOf = new Dictionary<string, int>(byRank.Length, StringComparer.Ordinal);
        for (int r = 0; r < byRank.Length; r++) rankOf.Add(Latin1(byRank[r]), r);

        var tokens = new string[byRank.Length + specials.Length];
        var types = new TokenType[tokens.Length];
        var merges = new List<string>(byRank.Length);
        for (int r = 0; r < byRank.Length; r++)
        {
            tokens[r] = ByteLevel(byRank[r]);
            types[r] = TokenType.Normal;
            if (byRank[r].Length < 2) continue;
            var parts = BytePairEncode(byRank[r], rankOf, maxRank: r);
            if (parts.Count != 2)
                throw new InvalidDataException($"{name}: token {r} does not split into exactly two lower-ranked parts (got {parts.Count})");
            merges.Add(ByteLevel(parts[0]) + " " + ByteLevel(parts[1]));
        }
        for (int i = 0; i < specials.Length; i++)
        {
            tokens[byRank.Length + i] = specials[i];
            types[byRank.Length + i] = TokenType.Control;
        }
        var vocab = new Vocabulary(name, "gpt2", pre, tokens, null, types, [.. merges], 0, 0, null, addBos, AddEos: false);
        return vocab with { BosId = vocab.IdOf(bos), EosId = vocab.IdOf(eos) };
    }

    private static List<byte[]> BytePairEncode(byte[] token, Dictionary<string, int> rankOf, int maxRank)
    {
        var parts = token.Select(b => new[] { b }).ToList();
        while (true)
        {
            int bestIndex = -1, bestRank = int.MaxValue;
            for (int i = 0; i + 1 < parts.Count; i++)
            {
                if (rankOf.TryGetValue(Latin1(parts[i], parts[i + 1]), out int rank) && rank < bestRank)
                {
                    bestRank = rank;
                    bestIndex = i;
                }
            }
            if (bestIndex < 0 || bestRank >= maxRank) return parts;
            parts[bestIndex] = [.. parts[bestIndex], .. parts[bestIndex + 1]];
            parts.RemoveAt(bestIndex + 1);
        }
    }

    // Bytes as Latin-1 characters: a cheap, exact string key for byte sequences.
    private static string Latin1(byte[] a) => Encoding.Latin1.GetString(a);
    private static string Latin1(byte[] a, byte[] b) => Encoding.Latin1.GetString([.. a, .. b]);

    private static readonly char[] ByteToUnicode = BuildByteToUnicode();

    /// <summary>GPT-2's reversible byte-to-character map: printable bytes stand for themselves, the rest map to U+0100 onwards.</summary>
    private static char[] BuildByteToUnicode()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[b] = printable ? (char)b : (char)next++;
        }
        return map;
    }

    public static string ByteLevel(ReadOnlySpan<byte> bytes)
    {
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = ByteToUnicode[bytes[i]];
        return new string(chars);
    }
}
