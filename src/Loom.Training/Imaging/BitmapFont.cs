namespace Loom.Training.Imaging;

/// <summary>
/// A 5×7 pixel font for chart labels: digits, lower-case letters (upper case is drawn with them) and the punctuation
/// numbers and short labels need. Any other character is drawn as '?'.
/// </summary>
public static class BitmapFont
{
    public const int GlyphWidth = 5;
    public const int GlyphHeight = 7;
    /// <summary>Horizontal distance from one character to the next: the glyph and one pixel of spacing.</summary>
    public const int Advance = GlyphWidth + 1;

    /// <summary>Each glyph as seven rows of five pixels, '#' set, '.' clear, rows separated by '|'.</summary>
    private static readonly Dictionary<char, string> Drawings = new()
    {
        ['0'] = ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
        ['1'] = "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
        ['2'] = ".###.|#...#|....#|...#.|..#..|.#...|#####",
        ['3'] = "#####|...#.|..#..|...#.|....#|#...#|.###.",
        ['4'] = "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
        ['5'] = "#####|#....|####.|....#|....#|#...#|.###.",
        ['6'] = "..##.|.#...|#....|####.|#...#|#...#|.###.",
        ['7'] = "#####|....#|...#.|..#..|.#...|.#...|.#...",
        ['8'] = ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
        ['9'] = ".###.|#...#|#...#|.####|....#|...#.|.##..",
        ['a'] = ".....|.....|.###.|....#|.####|#...#|.####",
        ['b'] = "#....|#....|#.##.|##..#|#...#|#...#|####.",
        ['c'] = ".....|.....|.###.|#....|#....|#...#|.###.",
        ['d'] = "....#|....#|.##.#|#..##|#...#|#...#|.####",
        ['e'] = ".....|.....|.###.|#...#|#####|#....|.###.",
        ['f'] = "..##.|.#..#|.#...|###..|.#...|.#...|.#...",
        ['g'] = ".....|.....|.####|#...#|.####|....#|.###.",
        ['h'] = "#....|#....|#.##.|##..#|#...#|#...#|#...#",
        ['i'] = "..#..|.....|.##..|..#..|..#..|..#..|.###.",
        ['j'] = "...#.|.....|..##.|...#.|...#.|#..#.|.##..",
        ['k'] = "#....|#....|#..#.|#.#..|##...|#.#..|#..#.",
        ['l'] = ".##..|..#..|..#..|..#..|..#..|..#..|.###.",
        ['m'] = ".....|.....|##.#.|#.#.#|#.#.#|#...#|#...#",
        ['n'] = ".....|.....|#.##.|##..#|#...#|#...#|#...#",
        ['o'] = ".....|.....|.###.|#...#|#...#|#...#|.###.",
        ['p'] = ".....|.....|####.|#...#|####.|#....|#....",
        ['q'] = ".....|.....|.##.#|#..##|.####|....#|....#",
        ['r'] = ".....|.....|#.##.|##..#|#....|#....|#....",
        ['s'] = ".....|.....|.###.|#....|.###.|....#|####.",
        ['t'] = ".#...|.#...|###..|.#...|.#...|.#..#|..##.",
        ['u'] = ".....|.....|#...#|#...#|#...#|#..##|.##.#",
        ['v'] = ".....|.....|#...#|#...#|#...#|.#.#.|..#..",
        ['w'] = ".....|.....|#...#|#...#|#.#.#|#.#.#|.#.#.",
        ['x'] = ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#",
        ['y'] = ".....|.....|#...#|#...#|.####|....#|.###.",
        ['z'] = ".....|.....|#####|...#.|..#..|.#...|#####",
        [' '] = ".....|.....|.....|.....|.....|.....|.....",
        ['.'] = ".....|.....|.....|.....|.....|.##..|.##..",
        [','] = ".....|.....|.....|.....|.##..|..#..|.#...",
        ['-'] = ".....|.....|.....|#####|.....|.....|.....",
        ['+'] = ".....|..#..|..#..|#####|..#..|..#..|.....",
        ['='] = ".....|.....|#####|.....|#####|.....|.....",
        [':'] = ".....|.##..|.##..|.....|.##..|.##..|.....",
        ['('] = "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
        [')'] = ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
        ['/'] = "....#|....#|...#.|..#..|.#...|#....|#....",
        ['%'] = "##..#|##.#.|...#.|..#..|.#...|.#.##|#..##",
        ['_'] = ".....|.....|.....|.....|.....|.....|#####",
        ['?'] = ".###.|#...#|....#|...#.|..#..|.....|..#..",
    };

    private static readonly Dictionary<char, byte[]> Glyphs = Drawings.ToDictionary(d => d.Key, d => Parse(d.Key, d.Value));

    /// <summary>The seven rows of <paramref name="c"/>, each a 5-bit mask whose highest bit is the leftmost pixel.</summary>
    public static ReadOnlySpan<byte> Glyph(char c) =>
        Glyphs.TryGetValue(char.ToLowerInvariant(c), out var glyph) ? glyph : Glyphs['?'];

    /// <summary>Width in pixels of <paramref name="text"/> drawn at <paramref name="scale"/>, without the trailing spacing.</summary>
    public static int TextWidth(string text, int scale = 1) => text.Length == 0 ? 0 : (text.Length * Advance - 1) * scale;

    private static byte[] Parse(char c, string drawing)
    {
        string[] rows = drawing.Split('|');
        if (rows.Length != GlyphHeight || rows.Any(r => r.Length != GlyphWidth))
            throw new InvalidOperationException($"glyph '{c}' is not {GlyphWidth}×{GlyphHeight}");
        return rows.Select(r => (byte)r.Aggregate(0, (bits, p) => bits << 1 | (p == '#' ? 1 : 0))).ToArray();
    }
}
