using Loom.Models.Gguf;

namespace Loom.Models.Tokenizers;

// API CONTRACT (placeholder bodies are replaced by the tokenizer work before anything lands on main).
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

    public static Tokenizer FromGguf(GgufFile file) => throw new NotImplementedException();
}
