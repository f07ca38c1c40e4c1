namespace Loom.Training.Imaging;

/// <summary>An 8-bit RGB colour.</summary>
public readonly record struct Rgb(byte R, byte G, byte B)
{
    public static readonly Rgb White = new(255, 255, 255);
    public static readonly Rgb Black = new(0, 0, 0);
}

/// <summary>
/// A small RGB raster with the few drawing operations a chart needs. Drawing outside the image is clipped, so callers
/// never have to bound-check coordinates computed from data.
/// </summary>
public sealed class RgbImage
{
    /// <summary>Large enough for any chart, small enough that a bad size never allocates gigabytes.</summary>
    public const int MaxSide = 8192;

    public RgbImage(int width, int height, Rgb background)
    {
        if (width is < 1 or > MaxSide || height is < 1 or > MaxSide)
            throw new ArgumentOutOfRangeException(nameof(width), $"an image must be 1 to {MaxSide} pixels on each side, not {width}×{height}");
        Width = width;
        Height = height;
        Pixels = new byte[width * height * 3];
        FillRectangle(0, 0, width, height, background);
    }

    public int Width { get; }
    public int Height { get; }
    /// <summary>Rows top to bottom, each pixel R, G, B.</summary>
    public byte[] Pixels { get; }

    public Rgb this[int x, int y]
    {
        get
        {
            int i = (y * Width + x) * 3;
            return new Rgb(Pixels[i], Pixels[i + 1], Pixels[i + 2]);
        }
    }

    public void SetPixel(int x, int y, Rgb colour)
    {
        if ((uint)x >= (uint)Width || (uint)y >= (uint)Height) return;
        int i = (y * Width + x) * 3;
        Pixels[i] = colour.R;
        Pixels[i + 1] = colour.G;
        Pixels[i + 2] = colour.B;
    }

    public void FillRectangle(int x, int y, int width, int height, Rgb colour)
    {
        int x0 = Math.Max(x, 0), y0 = Math.Max(y, 0);
        int x1 = Math.Min(x + width, Width), y1 = Math.Min(y + height, Height);
        for (int row = y0; row < y1; row++)
            for (int column = x0; column < x1; column++)
                SetPixel(column, row, colour);
    }

    /// <summary>A one-pixel rectangle outline.</summary>
    public void DrawRectangle(int x, int y, int width, int height, Rgb colour)
    {
        FillRectangle(x, y, width, 1, colour);
        FillRectangle(x, y + height - 1, width, 1, colour);
        FillRectangle(x, y, 1, height, colour);
        FillRectangle(x + width - 1, y, 1, height, colour);
    }

    /// <summary>A straight line (Bresenham) drawn with a square pen <paramref name="thickness"/> pixels wide.</summary>
    public void DrawLine(int x0, int y0, int x1, int y1, Rgb colour, int thickness = 1)
    {
        int dx = Math.Abs(x1 - x0), dy = -Math.Abs(y1 - y0);
        int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
        int error = dx + dy;
        int offset = (thickness - 1) / 2;
        while (true)
        {
            FillRectangle(x0 - offset, y0 - offset, thickness, thickness, colour);
            if (x0 == x1 && y0 == y1) break;
            int twice = 2 * error;
            if (twice >= dy) { error += dy; x0 += sx; }
            if (twice <= dx) { error += dx; y0 += sy; }
        }
    }

    /// <summary>Writes <paramref name="text"/> in the built-in bitmap font with its top-left corner at (x, y).</summary>
    public void DrawText(int x, int y, string text, Rgb colour, int scale = 1)
    {
        foreach (char c in text)
        {
            var glyph = BitmapFont.Glyph(c);
            for (int row = 0; row < BitmapFont.GlyphHeight; row++)
                for (int column = 0; column < BitmapFont.GlyphWidth; column++)
                    if ((glyph[row] & (1 << (BitmapFont.GlyphWidth - 1 - column))) != 0)
                        FillRectangle(x + column * scale, y + row * scale, scale, scale, colour);
            x += BitmapFont.Advance * scale;
        }
    }
}
