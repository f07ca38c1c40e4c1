using Loom.Models.Gguf;

namespace Loom.Models.Tokenizers;

/// <summary>A model's tokenizer, built from GGUF tokenizer.ggml.* metadata.</summary>
public abstract class Tokenizer
{
    public abstract int VocabSize { get; }
    /// <summary>Beginning-of-sequence token id, or -1 when the vocabulary has none.</summary>
    public abstract int BosId { get; }
    /// <summary>End-of-sequence token id, or -1 when the vocabulary has none.</summary>
    public abstract int EosId { get; }
    /// <summary>Whether Encode(addSpecial: true) prepends BOS / appends EOS (tokenizer.ggml.add_bos_token / add_eos_token).</summary>
    public abstract bool AddBos { get; }
    public abstract bool AddEos { get; }

    /// <summary>Tokenizes text. addSpecial adds BOS/EOS per the flags; parseSpecial lets text like "&lt;|im_start|&gt;" become its control token.</summary>
    public abstract int[] Encode(string text, bool addSpecial, bool parseSpecial = true);

    /// <summary>The raw vocabulary string of a token (as stored in tokenizer.ggml.tokens).</summary>
    public abstract string Piece(int id);

    /// <summary>The UTF-8 bytes a token contributes to decoded text; control tokens contribute nothing unless renderSpecial.</summary>
    public abstract byte[] TokenBytes(int id, bool renderSpecial = false);

    /// <summary>True for tokens that end generation: EOS, EOT, EOM and similar end-of-generation tokens.</summary>
    public abstract bool IsEndOfGeneration(int id);

    /// <summary>Decodes a sequence of tokens into text (invalid UTF-8 becomes U+FFFD).</summary>
    public abstract string Decode(ReadOnlySpan<int> ids, bool renderSpecial = false);

    /// <summary>
    /// Decodes a sequence of tokens into UTF-8 bytes as llama.cpp's llama_detokenize does (remove_special = false):
    /// the leading space the tokenizer adds is dropped from the first token, and BPE vocabularies tidy spaces before punctuation.
    /// </summary>
    public abstract byte[] DecodeBytes(ReadOnlySpan<int> ids, bool renderSpecial = false);

    /// <summary>End-of-turn token id (tokenizer.ggml.eot_token_id or found by its text), or -1.</summary>
    public abstract int EotId { get; }
    /// <summary>Unknown-token id, or -1.</summary>
    public abstract int UnknownId { get; }
    /// <summary>Padding token id, or -1.</summary>
    public abstract int PaddingId { get; }

    /// <summary>The attributes llama.cpp gives a token (its GGUF token type, adjusted as llama.cpp adjusts it).</summary>
    public abstract TokenAttributes Attributes(int id);

    /// <summary>
    /// Builds the tokenizer a GGUF file describes. Supports tokenizer.ggml.model "llama" (SentencePiece) and "gpt2"
    /// (byte-level BPE with the pre-tokenizer tokenizer.ggml.pre names); anything else throws NotSupportedException.
    /// </summary>
    public static Tokenizer FromGguf(GgufFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        string model = file.GetString("tokenizer.ggml.model")
            ?? throw new InvalidDataException($"{file.Path}: tokenizer.ggml.model is missing, so the file describes no tokenizer");
        return model switch
        {
            "llama" => new SpmTokenizer(new Vocabulary(file, VocabularyKind.SentencePiece)),
            "gpt2" => new BpeTokenizer(file),
            "bert" => throw new NotSupportedException($"{file.Path}: tokenizer.ggml.model 'bert' (WordPiece) is not supported; Loom supports 'llama' (SentencePiece) and 'gpt2' (byte-level BPE)"),
            _ => throw new NotSupportedException($"{file.Path}: tokenizer.ggml.model '{model}' is not supported; Loom supports 'llama' (SentencePiece) and 'gpt2' (byte-level BPE)"),
        };
    }
}
