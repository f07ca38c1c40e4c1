using System.Text;

namespace Loom.Models.Tokenizers;

/// <summary>
/// Turns token bytes into text as they arrive: a UTF-8 character split across tokens is held until its last byte
/// comes, and invalid bytes become U+FFFD, as a whole-sequence decode would produce.
/// </summary>
public sealed class Utf8StreamDecoder
{
    private readonly Decoder _decoder = new UTF8Encoding(false, false).GetDecoder();
    private char[] _chars = new char[64];

    public string Push(ReadOnlySpan<byte> bytes) => Decode(bytes, flush: false);

    /// <summary>Ends the stream: an unfinished character at the end becomes U+FFFD.</summary>
    public string Flush() => Decode([], flush: true);

    public void Reset() => _decoder.Reset();

    private string Decode(ReadOnlySpan<byte> bytes, bool flush)
    {
        int needed = _decoder.GetCharCount(bytes, flush);
        if (needed > _chars.Length) _chars = new char[Math.Max(needed, 2 * _chars.Length)];
        int written = _decoder.GetChars(bytes, _chars, flush);
        return written == 0 ? "" : new string(_chars, 0, written);
    }
}
