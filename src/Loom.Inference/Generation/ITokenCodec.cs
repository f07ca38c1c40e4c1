using Loom.Models.Tokenizers;

namespace Loom.Inference.Generation;

/// <summary>The part of a tokenizer that generation uses (tests substitute a small vocabulary).</summary>
public interface ITokenCodec
{
    int BosId { get; }
    int EosId { get; }
    bool AddBos { get; }
    int[] Encode(string text, bool addSpecial, bool parseSpecial);
    string Piece(int id);
    byte[] TokenBytes(int id, bool renderSpecial = false);
    bool IsEndOfGeneration(int id);
}

/// <summary>A model's <see cref="Tokenizer"/> seen as an <see cref="ITokenCodec"/>.</summary>
public sealed class TokenizerCodec(Tokenizer tokenizer) : ITokenCodec
{
    public Tokenizer Tokenizer { get; } = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
    public int BosId => Tokenizer.BosId;
    public int EosId => Tokenizer.EosId;
    public bool AddBos => Tokenizer.AddBos;
    public int[] Encode(string text, bool addSpecial, bool parseSpecial) => Tokenizer.Encode(text, addSpecial, parseSpecial);
    public string Piece(int id) => Tokenizer.Piece(id);
    public byte[] TokenBytes(int id, bool renderSpecial = false) => Tokenizer.TokenBytes(id, renderSpecial);
    public bool IsEndOfGeneration(int id) => Tokenizer.IsEndOfGeneration(id);
}
