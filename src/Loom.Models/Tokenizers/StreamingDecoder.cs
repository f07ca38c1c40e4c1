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
    private readonly Utf8StreamDecoder _utf8 = new();

    public StreamingDecoder(Tokenizer tokenizer, bool renderSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tokenizer = tokenizer;
        _renderSpecial = renderSpecial;
    }

    /// <summary>Adds one token; returns the characters it completes (possibly empty).</summary>
    public string Push(int id) => _utf8.Push(_tokenizer.TokenBytes(id, _renderSpecial));

    /// <summary>Ends the stream: bytes of an unfinished character come out as U+FFFD. The decoder can then start a new stream.</summary>
    public string Flush() => _utf8.Flush();
}
