using System.Text;

namespace Loom.Models.Tokenizers;

/// <summary>
/// Turns generated tokens into text as they arrive. A character split across byte tokens (e.g. an emoji as four
/// &lt;0xNN&gt; tokens) is held back until complete, so Push returns only whole characters; invalid UTF-8 becomes U+FFFD.
/// Pieces are rendered as llama.cpp's token_to_piece renders them (no leading-space removal, no space clean-up).
/// </summary>
public sealed class StreamingDecoder
{
    private readonly Tokenizer _tokenizer;
    private readonly bool _renderSpecial;
    private readonly Decoder _utf8 = Encoding.UTF8.GetDecoder();
    private char[] _chars = new char[64];

    public StreamingDecoder(Tokenizer tokenizer, bool renderSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tokenizer = tokenizer;
        _renderSpecial = renderSpecial;
    }

    /// <summary>Adds one token; returns the characters it completes (possibly empty).</summary>
    public string Push(int id) => DecodeBytes(_tokenizer.TokenBytes(id, _renderSpecial), flush: false);

    /// <summary>Ends the stream: bytes of an unfinished character come out as U+FFFD. The decoder can then start a new stream.</summary>
    public string Flush() => DecodeBytes([], flush: true);

    private string DecodeBytes(byte[] bytes, bool flush)
    {
        int needed = _utf8.GetCharCount(bytes, flush: false) + 4; // room for what a flush may add
        if (_chars.Length < needed) _chars = new char[Math.Max(needed, _chars.Length * 2)];
        int count = _utf8.GetChars(bytes, 0, bytes.Length, _chars, 0, flush);
        return count == 0 ? "" : new string(_chars, 0, count);
    }
}
