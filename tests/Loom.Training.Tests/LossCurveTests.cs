using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using Loom.Cli;
using Loom.Training.Imaging;

namespace Loom.Training.Tests;

/// <summary>The loss history (CSV) and its chart (a PNG written by Loom's own encoder), alone and from `loom train`.</summary>
public sealed class LossCurveTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("loom-loss-curve-").FullName;

    /// <summary>Training loss falling from 5 to about 1 over 100 steps (with a wobble); validation every 20 steps, a little higher.</summary>
    private static LossHistory FallingHistory()
    {
        var history = new LossHistory();
        for (int step = 1; step <= 100; step++)
        {
            history.AddStep(step, 1 + 4 * Math.Exp(-step / 25.0) + 0.05 * Math.Sin(step), 1e-3f * step / 100);
            if (step % 20 == 0) history.AddValidation(step, 1.3 + 4 * Math.Exp(-step / 25.0));
        }
        return history;
    }

    [Fact]
    public void ChartIsAValidPng()
    {
        var chart = LossCurve.Render(FallingHistory(), 640, 400);
        string path = Path.Combine(_dir, "loss.png");
        chart.Save(path);
        var png = DecodePng(File.ReadAllBytes(path));
        Assert.Equal((640, 400), (png.Width, png.Height));
        Assert.Equal(chart.Image.Pixels, png.Pixels);
    }

    [Fact]
    public void CurvesAreDrawnWhereTheDataSays()
    {
        var history = FallingHistory();
        var chart = LossCurve.Render(history);
        var png = DecodePng(PngEncoder.Encode(chart.Image));
        var records = history.Records.ToList();

        // First point high in the image, last point low; both drawn in the training colour.
        var start = chart.PixelOf(records[0].Step, records[0].Loss);
        var end = chart.PixelOf(records[^1].Step, records[^1].Loss);
        Assert.True(start.Y < chart.Top + (chart.Bottom - chart.Top) / 5, $"the first loss (highest) is drawn at y = {start.Y}");
        Assert.True(end.Y > chart.Bottom - (chart.Bottom - chart.Top) / 3, $"the last loss (lowest) is drawn at y = {end.Y}");
        Assert.True(start.X <= chart.Left + 10 && end.X >= chart.Right - 10, $"steps run from x = {start.X} to {end.X}");
        foreach (var r in records)
        {
            var (x, y) = chart.PixelOf(r.Step, r.Loss);
            Assert.True(png.Near(x, y, LossCurve.TrainColour, 1), $"no training-loss pixel at step {r.Step} ({x}, {y})");
            if (double.IsFinite(r.ValidationLoss))
            {
                var (vx, vy) = chart.PixelOf(r.Step, r.ValidationLoss);
                Assert.True(png.Near(vx, vy, LossCurve.ValidationColour, 0), $"no validation marker at step {r.Step} ({vx}, {vy})");
            }
        }
        // Nowhere else in a column does the training line stray far from the data (legend aside, top right).
        int column = chart.PixelOf(50, 0).X;
        var (_, expectedY) = chart.PixelOf(50, records[49].Loss);
        var rows = Enumerable.Range(chart.Top, chart.Bottom - chart.Top).Where(y => png[column, y] == LossCurve.TrainColour).ToList();
        Assert.NotEmpty(rows);
        Assert.All(rows, y => Assert.InRange(y, expectedY - 4, expectedY + 4));

        // Tick labels left of and below the axes, in dark text; the legend shows both colours inside the top right.
        Assert.True(png.CountDark(0, chart.Top, chart.Left - 6, chart.Bottom) > 100, "no loss tick labels");
        Assert.True(png.CountDark(chart.Left, chart.Bottom + 6, chart.Right, png.Height) > 100, "no step tick labels");
        int legendLeft = chart.Right - (chart.Right - chart.Left) / 3;
        Assert.True(png.Count(legendLeft, chart.Top, chart.Right, chart.Top + 60, LossCurve.TrainColour) > 20);
        Assert.True(png.Count(legendLeft, chart.Top, chart.Right, chart.Top + 60, LossCurve.ValidationColour) > 20);
    }

    [Fact]
    public void OnePointOrNoPointStillRenders()
    {
        var single = new LossHistory();
        single.AddStep(1, 2.5, 1e-3f);
        var chart = LossCurve.Render(single);
        var (x, y) = chart.PixelOf(1, 2.5);
        Assert.Equal(LossCurve.TrainColour, chart.Image[x, y]);
        Assert.Equal(400 * 300 * 3, LossCurve.Render(new LossHistory(), 400, 300).Image.Pixels.Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => LossCurve.Render(single, 50, 50));
    }

    [Fact]
    public void HistoryRoundTripsThroughCsv()
    {
        var history = FallingHistory();
        history.AddValidation(0, 6.0);
        string path = Path.Combine(_dir, "loss.csv");
        history.WriteCsv(path);
        string[] lines = File.ReadAllLines(path);
        Assert.Equal("step,loss,lr,val_loss", lines[0]);
        Assert.Equal("0,,,6", lines[1]);
        Assert.StartsWith("20,", lines[21]);
        Assert.EndsWith("," + (1.3 + 4 * Math.Exp(-20 / 25.0)).ToString("R", System.Globalization.CultureInfo.InvariantCulture), lines[21]);

        var read = LossHistory.ReadCsv(path);
        Assert.Equal(history.Records, read.Records);
        read.DropAfter(40);
        Assert.Equal(41, read.Records.Count);

        File.WriteAllText(path, "step,loss,lr,val_loss\n1,2.0,0.001\n");
        Assert.Contains(":2:", Assert.Throws<InvalidDataException>(() => LossHistory.ReadCsv(path)).Message);
        File.WriteAllText(path, "something else\n");
        Assert.Throws<InvalidDataException>(() => LossHistory.ReadCsv(path));
    }

    [Fact]
    public void TrainWritesTheHistoryAndItsChartAndResumeContinuesThem()
    {
        string data = Path.Combine(_dir, "data.txt");
        File.WriteAllText(data, TrainerTests.SampleText(400, 5));
        string output = Path.Combine(_dir, "out");
        string[] common = ["train", "--data", data, "--out", output, "--dim", "32", "--layers", "1", "--heads", "4", "--kv-heads", "2",
            "--ctx", "16", "--batch", "2", "--warmup", "1", "--eval-every", "2", "--export", "q8_0"];
        var error = new StringWriter();
        int code = LoomCli.Run([.. common, "--steps", "4"], new CliConsole(TextReader.Null, new StringWriter(), error));
        Assert.True(code == 0, error.ToString());
        var history = LossHistory.ReadCsv(Path.Combine(output, "loss.csv"));
        Assert.Equal([1L, 2, 3, 4], history.Records.Select(r => r.Step));
        Assert.All(history.Records, r => Assert.True(double.IsFinite(r.Loss) && r.LearningRate > 0));
        Assert.Equal([2L, 4], history.Records.Where(r => double.IsFinite(r.ValidationLoss)).Select(r => r.Step));
        var png = DecodePng(File.ReadAllBytes(Path.Combine(output, "loss.png")));
        Assert.True(png.Count(0, 0, png.Width, png.Height, LossCurve.TrainColour) > 50);

        error = new StringWriter();
        code = LoomCli.Run([.. common, "--steps", "6", "--resume"], new CliConsole(TextReader.Null, new StringWriter(), error));
        Assert.True(code == 0, error.ToString());
        var resumed = LossHistory.ReadCsv(Path.Combine(output, "loss.csv"));
        Assert.Equal([1L, 2, 3, 4, 5, 6], resumed.Records.Select(r => r.Step));
        Assert.Equal(history.Records.Take(4), resumed.Records.Take(4));
    }

    /// <summary>A decoded 8-bit RGB PNG, checked chunk by chunk on the way.</summary>
    private sealed record DecodedPng(int Width, int Height, byte[] Pixels)
    {
        public Rgb this[int x, int y] => new(Pixels[(y * Width + x) * 3], Pixels[(y * Width + x) * 3 + 1], Pixels[(y * Width + x) * 3 + 2]);

        public bool Near(int x, int y, Rgb colour, int radius)
        {
            for (int dy = -radius; dy <= radius; dy++)
                for (int dx = -radius; dx <= radius; dx++)
                    if (x + dx >= 0 && x + dx < Width && y + dy >= 0 && y + dy < Height && this[x + dx, y + dy] == colour) return true;
            return false;
        }

        public int Count(int x0, int y0, int x1, int y1, Rgb colour) => Pixels0(x0, y0, x1, y1).Count(p => this[p.X, p.Y] == colour);

        public int CountDark(int x0, int y0, int x1, int y1) => Pixels0(x0, y0, x1, y1).Count(p => this[p.X, p.Y] is { R: < 80, G: < 80, B: < 80 });

        private IEnumerable<(int X, int Y)> Pixels0(int x0, int y0, int x1, int y1) =>
            from y in Enumerable.Range(Math.Max(0, y0), Math.Min(Height, y1) - Math.Max(0, y0))
            from x in Enumerable.Range(Math.Max(0, x0), Math.Min(Width, x1) - Math.Max(0, x0))
            select (x, y);
    }

    /// <summary>
    /// Reads a PNG as the specification lays it out: signature, IHDR first, every chunk's CRC-32 (computed here bit by
    /// bit, independently of the encoder's table), IDAT data inflating to exactly one filter byte plus the row per row.
    /// </summary>
    private static DecodedPng DecodePng(byte[] file)
    {
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, file[..8]);
        var chunks = new List<(string Type, byte[] Data)>();
        for (int offset = 8; offset < file.Length;)
        {
            int length = checked((int)BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(offset)));
            string type = Encoding.ASCII.GetString(file, offset + 4, 4);
            byte[] data = file.AsSpan(offset + 8, length).ToArray();
            uint crc = BinaryPrimitives.ReadUInt32BigEndian(file.AsSpan(offset + 8 + length));
            Assert.True(BitwiseCrc32(file.AsSpan(offset + 4, 4 + length)) == crc, $"bad CRC on chunk {type}");
            chunks.Add((type, data));
            offset += 12 + length;
        }
        Assert.Equal("IHDR", chunks[0].Type);
        Assert.Equal("IEND", chunks[^1].Type);
        Assert.Empty(chunks[^1].Data);
        var header = chunks[0].Data;
        Assert.Equal(13, header.Length);
        int width = (int)BinaryPrimitives.ReadUInt32BigEndian(header);
        int height = (int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4));
        Assert.Equal(new byte[] { 8, 2, 0, 0, 0 }, header[8..]);  // 8-bit RGB, deflate, standard filters, no interlace

        var compressed = chunks.Where(c => c.Type == "IDAT").SelectMany(c => c.Data).ToArray();
        using var inflater = new ZLibStream(new MemoryStream(compressed), CompressionMode.Decompress);
        var raw = new MemoryStream();
        inflater.CopyTo(raw);
        int stride = 1 + width * 3;
        Assert.Equal(height * stride, raw.Length);
        byte[] bytes = raw.ToArray();
        var pixels = new byte[width * height * 3];
        for (int y = 0; y < height; y++)
        {
            Assert.Equal(0, bytes[y * stride]);  // filter None, the only one the encoder uses
            Array.Copy(bytes, y * stride + 1, pixels, y * width * 3, width * 3);
        }
        return new DecodedPng(width, height, pixels);
    }

    private static uint BitwiseCrc32(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (uint)-(int)(crc & 1));
        }
        return ~crc;
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
