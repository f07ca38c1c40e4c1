using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using Loom.Core.IO;

namespace Loom.Training.Imaging;

/// <summary>
/// Writes an <see cref="RgbImage"/> as a PNG: 8-bit truecolour, no interlace, every row unfiltered, the pixel data in
/// one zlib-compressed IDAT chunk.
/// </summary>
public static class PngEncoder
{
    private static readonly byte[] Signature = [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];
    private static readonly uint[] CrcTable = BuildCrcTable();

    public static byte[] Encode(RgbImage image)
    {
        using var output = new MemoryStream();
        Encode(image, output);
        return output.ToArray();
    }

    public static void Encode(RgbImage image, Stream output)
    {
        output.Write(Signature);

        var header = new byte[13];
        BinaryPrimitives.WriteUInt32BigEndian(header, (uint)image.Width);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(4), (uint)image.Height);
        header[8] = 8;  // bits per channel
        header[9] = 2;  // colour type: RGB
        // compression method 0 (deflate), filter method 0, no interlace: the remaining bytes stay 0
        WriteChunk(output, "IHDR", header);

        using (var compressed = new MemoryStream())
        {
            using (var zlib = new ZLibStream(compressed, CompressionLevel.Optimal, leaveOpen: true))
            {
                int rowBytes = image.Width * 3;
                for (int y = 0; y < image.Height; y++)
                {
                    zlib.WriteByte(0);  // filter type None
                    zlib.Write(image.Pixels, y * rowBytes, rowBytes);
                }
            }
            WriteChunk(output, "IDAT", compressed.GetBuffer().AsSpan(0, (int)compressed.Length));
        }
        WriteChunk(output, "IEND", []);
    }

    /// <summary>Writes the PNG to <paramref name="path"/> all at once (through a temporary file beside it).</summary>
    public static void Write(string path, RgbImage image)
    {
        string fullPath = Path.GetFullPath(path);
        string temporary = Path.Combine(Path.GetDirectoryName(fullPath)!, $".{Path.GetFileName(fullPath)}.{Guid.NewGuid():N}.tmp");
        AtomicFile.Write(fullPath, temporary, file => Encode(image, file));
    }

    private static void WriteChunk(Stream output, string type, ReadOnlySpan<byte> data)
    {
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(word, (uint)data.Length);
        output.Write(word);
        byte[] typeBytes = Encoding.ASCII.GetBytes(type);
        output.Write(typeBytes);
        output.Write(data);
        BinaryPrimitives.WriteUInt32BigEndian(word, ~UpdateCrc(UpdateCrc(0xFFFFFFFFu, typeBytes), data));
        output.Write(word);
    }

    /// <summary>One step of PNG's CRC-32 (ISO 3309): start from all ones, invert at the end.</summary>
    private static uint UpdateCrc(uint crc, ReadOnlySpan<byte> data)
    {
        foreach (byte b in data) crc = CrcTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return crc;
    }

    private static uint[] BuildCrcTable()
    {
        var table = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            uint c = n;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[n] = c;
        }
        return table;
    }
}
