using System.Globalization;
using Loom.Training.Imaging;

namespace Loom.Training;

/// <summary>
/// A chart of a <see cref="LossHistory"/>: training loss per step as a line, validation losses as marked points, with
/// axes, grid, tick labels and a legend.
/// </summary>
public sealed class LossCurve
{
    public static readonly Rgb TrainColour = new(31, 119, 180);
    public static readonly Rgb ValidationColour = new(230, 85, 13);
    private static readonly Rgb AxisColour = new(60, 60, 60);
    private static readonly Rgb GridColour = new(225, 225, 225);
    private static readonly Rgb TextColour = new(30, 30, 30);

    private const int TextScale = 2;
    private const int TextHeight = BitmapFont.GlyphHeight * TextScale;
    private const int LineThickness = 2;
    private const int MarkerSize = 7;
    private const int TargetTicks = 6;

    private readonly double _stepMin, _stepMax, _lossMin, _lossMax;

    private LossCurve(RgbImage image, int left, int top, int right, int bottom, double stepMin, double stepMax, double lossMin, double lossMax)
    {
        Image = image;
        (Left, Top, Right, Bottom) = (left, top, right, bottom);
        (_stepMin, _stepMax, _lossMin, _lossMax) = (stepMin, stepMax, lossMin, lossMax);
    }

    public RgbImage Image { get; }
    /// <summary>The plot area in pixels (inclusive edges); the axes run along its left and bottom edges.</summary>
    public int Left { get; }
    public int Top { get; }
    public int Right { get; }
    public int Bottom { get; }

    /// <summary>Where a (step, loss) point of the data lies in the image.</summary>
    public (int X, int Y) PixelOf(double step, double loss) =>
        ((int)Math.Round(Left + (step - _stepMin) / (_stepMax - _stepMin) * (Right - Left)),
         (int)Math.Round(Bottom - (loss - _lossMin) / (_lossMax - _lossMin) * (Bottom - Top)));

    public void Save(string path) => PngEncoder.Write(path, Image);

    public static LossCurve Render(LossHistory history, int width = 800, int height = 480)
    {
        var train = history.Records.Where(r => double.IsFinite(r.Loss)).Select(r => (r.Step, Value: r.Loss)).ToList();
        var validation = history.Records.Where(r => double.IsFinite(r.ValidationLoss)).Select(r => (r.Step, Value: r.ValidationLoss)).ToList();
        var all = train.Concat(validation).ToList();

        var (stepMin, stepMax) = all.Count == 0 ? (0.0, 1.0) : Widen(all.Min(p => p.Step), all.Max(p => p.Step), 1);
        var stepTicks = Ticks(stepMin, stepMax, integral: true);
        (stepMin, stepMax) = (Math.Min(stepMin, stepTicks.Values[0]), Math.Max(stepMax, stepTicks.Values[^1]));
        var (lossMin, lossMax) = all.Count == 0 ? (0.0, 1.0) : Widen(all.Min(p => p.Value), all.Max(p => p.Value), 0.1);
        var lossTicks = Ticks(lossMin, lossMax, integral: false);
        (lossMin, lossMax) = (Math.Min(lossMin, lossTicks.Values[0]), Math.Max(lossMax, lossTicks.Values[^1]));

        string[] lossLabels = lossTicks.Values.Select(v => v.ToString("F" + lossTicks.Decimals, CultureInfo.InvariantCulture)).ToArray();
        int left = lossLabels.Max(l => BitmapFont.TextWidth(l, TextScale)) + 24;
        int top = TextHeight + 24, right = width - 24, bottom = height - 2 * TextHeight - 32;
        if (right - left < 100 || bottom - top < 100)
            throw new ArgumentOutOfRangeException(nameof(width), $"a {width}×{height} image leaves no room for the chart");

        var image = new RgbImage(width, height, Rgb.White);
        var chart = new LossCurve(image, left, top, right, bottom, stepMin, stepMax, lossMin, lossMax);
        chart.DrawAxes(stepTicks.Values, lossTicks.Values, lossLabels);
        chart.DrawSeries(train, TrainColour, markers: false);
        chart.DrawSeries(validation, ValidationColour, markers: true);
        chart.DrawLegend();
        return chart;
    }

    private void DrawAxes(double[] stepTicks, double[] lossTicks, string[] lossLabels)
    {
        for (int i = 0; i < lossTicks.Length; i++)
        {
            int y = PixelOf(_stepMin, lossTicks[i]).Y;
            Image.FillRectangle(Left, y, Right - Left + 1, 1, GridColour);
            Image.FillRectangle(Left - 5, y, 5, 1, AxisColour);
            Image.DrawText(Left - 9 - BitmapFont.TextWidth(lossLabels[i], TextScale), y - TextHeight / 2, lossLabels[i], TextColour, TextScale);
        }
        foreach (double step in stepTicks)
        {
            int x = PixelOf(step, _lossMin).X;
            string label = step.ToString("F0", CultureInfo.InvariantCulture);
            Image.FillRectangle(x, Top, 1, Bottom - Top + 1, GridColour);
            Image.FillRectangle(x, Bottom + 1, 1, 5, AxisColour);
            Image.DrawText(x - BitmapFont.TextWidth(label, TextScale) / 2, Bottom + 10, label, TextColour, TextScale);
        }
        Image.FillRectangle(Left, Top, 1, Bottom - Top + 1, AxisColour);
        Image.FillRectangle(Left, Bottom, Right - Left + 1, 1, AxisColour);
        Image.DrawText((Left + Right - BitmapFont.TextWidth("step", TextScale)) / 2, Bottom + TextHeight + 20, "step", TextColour, TextScale);
        Image.DrawText(Math.Max(2, Left - BitmapFont.TextWidth("loss", TextScale) / 2), Top - TextHeight - 10, "loss", TextColour, TextScale);
    }

    private void DrawSeries(List<(long Step, double Value)> points, Rgb colour, bool markers)
    {
        for (int i = 0; i < points.Count; i++)
        {
            var (x, y) = PixelOf(points[i].Step, points[i].Value);
            if (i > 0)
            {
                var (px, py) = PixelOf(points[i - 1].Step, points[i - 1].Value);
                Image.DrawLine(px, py, x, y, colour, LineThickness);
            }
            else if (points.Count == 1) Image.DrawLine(x, y, x, y, colour, LineThickness);
            if (markers) Image.FillRectangle(x - MarkerSize / 2, y - MarkerSize / 2, MarkerSize, MarkerSize, colour);
        }
    }

    private void DrawLegend()
    {
        const string trainLabel = "training loss", validationLabel = "validation loss";
        const int sample = 28, padding = 10, rowHeight = TextHeight + 10;
        int width = padding + sample + 8 + BitmapFont.TextWidth(validationLabel, TextScale) + padding;
        int height = 2 * rowHeight + padding;
        int x = Right - width - 8, y = Top + 8;
        Image.FillRectangle(x, y, width, height, Rgb.White);
        Image.DrawRectangle(x, y, width, height, AxisColour);
        int row1 = y + padding / 2 + rowHeight / 2, row2 = row1 + rowHeight;
        Image.DrawLine(x + padding, row1, x + padding + sample, row1, TrainColour, LineThickness);
        Image.DrawText(x + padding + sample + 8, row1 - TextHeight / 2, trainLabel, TextColour, TextScale);
        Image.DrawLine(x + padding, row2, x + padding + sample, row2, ValidationColour, LineThickness);
        Image.FillRectangle(x + padding + sample / 2 - MarkerSize / 2, row2 - MarkerSize / 2, MarkerSize, MarkerSize, ValidationColour);
        Image.DrawText(x + padding + sample + 8, row2 - TextHeight / 2, validationLabel, TextColour, TextScale);
    }

    /// <summary>A range with room around a single value, so a flat or one-point series still has a scale.</summary>
    private static (double Min, double Max) Widen(double min, double max, double least)
    {
        if (max - min >= least) return (min, max);
        double middle = (min + max) / 2;
        return (middle - least / 2, middle + least / 2);
    }

    /// <summary>Round tick values (1, 2 or 5 times a power of ten apart) covering [min, max], and the decimals they need.</summary>
    private static (double[] Values, int Decimals) Ticks(double min, double max, bool integral)
    {
        double rough = (max - min) / (TargetTicks - 1);
        double magnitude = Math.Pow(10, Math.Floor(Math.Log10(rough)));
        double spacing = new[] { 1.0, 2.0, 5.0, 10.0 }.Select(m => m * magnitude).First(s => s >= rough * 0.999);
        if (integral) spacing = Math.Max(1, Math.Round(spacing));
        double first = Math.Floor(min / spacing + 1e-9) * spacing, last = Math.Ceiling(max / spacing - 1e-9) * spacing;
        int count = (int)Math.Round((last - first) / spacing) + 1;
        var values = Enumerable.Range(0, count).Select(i => first + i * spacing).ToArray();
        int decimals = Math.Max(0, -(int)Math.Floor(Math.Log10(spacing) + 1e-9));
        return (values, decimals);
    }
}
