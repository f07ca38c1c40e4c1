using System.Globalization;
using System.Text;
using Loom.Core.IO;

namespace Loom.Training;

/// <summary>
/// One step of a training run: its training loss and learning rate, and the validation loss measured after it (NaN
/// where the step was not evaluated, or for a value the history does not hold).
/// </summary>
public readonly record struct LossRecord(long Step, double Loss, float LearningRate, double ValidationLoss);

/// <summary>
/// The losses of a training run, step by step, kept as a CSV file (<c>step,loss,lr,val_loss</c>) that a resumed run
/// reads back and continues, and drawn as a chart by <see cref="LossCurve"/>.
/// </summary>
public sealed class LossHistory
{
    public const string CsvHeader = "step,loss,lr,val_loss";

    private readonly SortedDictionary<long, LossRecord> _records = [];

    /// <summary>The records in step order.</summary>
    public IReadOnlyCollection<LossRecord> Records => _records.Values;

    public void AddStep(long step, double loss, float learningRate)
    {
        double validation = _records.TryGetValue(step, out var existing) ? existing.ValidationLoss : double.NaN;
        _records[step] = new LossRecord(step, loss, learningRate, validation);
    }

    public void AddValidation(long step, double validationLoss)
    {
        _records[step] = _records.TryGetValue(step, out var existing)
            ? existing with { ValidationLoss = validationLoss }
            : new LossRecord(step, double.NaN, float.NaN, validationLoss);
    }

    /// <summary>Forgets every step after <paramref name="step"/>: a run resumed from a checkpoint repeats them.</summary>
    public void DropAfter(long step)
    {
        foreach (long later in _records.Keys.Where(s => s > step).ToList()) _records.Remove(later);
    }

    /// <summary>Writes the history as CSV, replacing the file all at once.</summary>
    public void WriteCsv(string path)
    {
        var text = new StringBuilder(CsvHeader).Append('\n');
        foreach (var r in _records.Values)
            text.Append(r.Step.ToString(CultureInfo.InvariantCulture)).Append(',')
                .Append(Format(r.Loss)).Append(',')
                .Append(Format(r.LearningRate)).Append(',')
                .Append(Format(r.ValidationLoss)).Append('\n');
        string fullPath = Path.GetFullPath(path);
        string temporary = Path.Combine(Path.GetDirectoryName(fullPath)!, $".{Path.GetFileName(fullPath)}.{Guid.NewGuid():N}.tmp");
        byte[] bytes = Encoding.UTF8.GetBytes(text.ToString());
        AtomicFile.Write(fullPath, temporary, file => file.Write(bytes));
    }

    /// <summary>Reads a history written by <see cref="WriteCsv"/>; a malformed line throws <see cref="InvalidDataException"/> naming it.</summary>
    public static LossHistory ReadCsv(string path)
    {
        string[] lines = File.ReadAllLines(path);
        if (lines.Length == 0 || lines[0].Trim() != CsvHeader)
            throw new InvalidDataException($"{path}: not a loss history (the first line must be '{CsvHeader}')");
        var history = new LossHistory();
        for (int i = 1; i < lines.Length; i++)
        {
            if (lines[i].Length == 0) continue;
            string[] fields = lines[i].Split(',');
            if (fields.Length != 4 || !long.TryParse(fields[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out long step)
                || !TryParse(fields[1], out double loss) || !TryParse(fields[2], out double rate) || !TryParse(fields[3], out double validation))
                throw new InvalidDataException($"{path}:{i + 1}: expected step,loss,lr,val_loss but found '{lines[i]}'");
            history._records[step] = new LossRecord(step, loss, (float)rate, validation);
        }
        return history;
    }

    /// <summary>Round-trip text for a value; NaN (no value) as an empty field.</summary>
    private static string Format(double value) => double.IsNaN(value) ? "" : value.ToString("R", CultureInfo.InvariantCulture);
    private static string Format(float value) => float.IsNaN(value) ? "" : value.ToString("R", CultureInfo.InvariantCulture);

    private static bool TryParse(string field, out double value)
    {
        if (field.Length == 0)
        {
            value = double.NaN;
            return true;
        }
        return double.TryParse(field, NumberStyles.Float, CultureInfo.InvariantCulture, out value);
    }
}
