namespace Loom.Core;

/// <summary>Summaries of repeated measurements, shared by the probes and every benchmark.</summary>
public static class Statistics
{
    /// <summary>The middle value (the mean of the two middle ones for an even count); the input is left as it is.</summary>
    public static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        if (sorted.Length == 0) throw new ArgumentException("the median of no values is undefined", nameof(values));
        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }
}
