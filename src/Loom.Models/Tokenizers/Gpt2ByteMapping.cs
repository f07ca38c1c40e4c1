namespace Loom.Models.Tokenizers;

/// <summary>
/// GPT-2's reversible byte &lt;-&gt; unicode mapping: printable bytes stand for themselves, the other 68 bytes take
/// the code points 256, 257, ... in byte order, so every byte sequence becomes visible text without spaces.
/// </summary>
public static class Gpt2ByteMapping
{
    /// <summary>The character that stands for each byte.</summary>
    internal static readonly char[] ByteToChar = BuildByteToChar();

    /// <summary>The byte a mapped character stands for, or -1; indexed by the character (all are below 0x144).</summary>
    private static readonly short[] CharToByte = BuildCharToByte();

    /// <summary>Bytes as GPT-2 vocabularies write them: one mapped character per byte.</summary>
    public static string Map(ReadOnlySpan<byte> bytes)
    {
        var text = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) text[i] = ByteToChar[bytes[i]];
        return new string(text);
    }

    internal static int ByteOf(int codepoint) => (uint)codepoint < (uint)CharToByte.Length ? CharToByte[codepoint] : -1;

    private static bool IsPrintable(int b) => b is >= 0x21 and <= 0x7E or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++) map[b] = IsPrintable(b) ? (char)b : (char)next++;
        return map;
    }

    private static short[] BuildCharToByte()
    {
        var inverse = new short[0x144];
        Array.Fill(inverse, (short)-1);
        for (int b = 0; b < 256; b++) inverse[ByteToChar[b]] = (short)b;
        return inverse;
    }
}
