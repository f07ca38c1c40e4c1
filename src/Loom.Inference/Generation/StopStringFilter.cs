using System.Text;

namespace Loom.Inference.Generation;

/// <summary>
/// Cuts streamed text at the first stop string. Text that could still grow into a stop string (a suffix that is a
/// prefix of one) is held back until it either completes the stop string — then it is dropped — or cannot anymore,
/// so the caller never sees any part of a stop string even when it spans several tokens.
/// </summary>
public sealed class StopStringFilter
{
    private readonly string[] _stops;
    private readonly StringBuilder _pending = new();

    public StopStringFilter(IEnumerable<string>? stops)
    {
        _stops = (stops ?? []).Where(s => !string.IsNullOrEmpty(s)).Distinct(StringComparer.Ordinal).ToArray();
    }

    public IReadOnlyList<string> Stops => _stops;

    /// <summary>True once a stop string has been seen; later input is ignored.</summary>
    public bool Stopped { get; private set; }

    /// <summary>The stop string that ended the text, or null.</summary>
    public string? MatchedStop { get; private set; }

    /// <summary>Adds a piece of text and returns the part that is now safe to show (possibly empty).</summary>
    public string Push(string piece)
    {
        if (Stopped || piece.Length == 0) return "";
        if (_stops.Length == 0) return piece;
        _pending.Append(piece);
        string text = _pending.ToString();

        int cut = -1;
        foreach (string stop in _stops)
        {
            int at = text.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (cut < 0 || at < cut)) { cut = at; MatchedStop = stop; }
        }
        if (cut >= 0)
        {
            Stopped = true;
            _pending.Clear();
            return text[..cut];
        }

        int held = LongestStopPrefixSuffix(text);
        _pending.Clear().Append(text, text.Length - held, held);
        return text[..^held];
    }

    /// <summary>Returns the held-back text at the end of generation (when no stop string completed it).</summary>
    public string Flush()
    {
        string rest = _pending.ToString();
        _pending.Clear();
        return Stopped ? "" : rest;
    }

    /// <summary>Length of the longest suffix of <paramref name="text"/> that is a proper prefix of some stop string.</summary>
    private int LongestStopPrefixSuffix(string text)
    {
        int best = 0;
        foreach (string stop in _stops)
        {
            for (int length = Math.Min(stop.Length - 1, text.Length); length > best; length--)
            {
                if (text.AsSpan(text.Length - length).SequenceEqual(stop.AsSpan(0, length)))
                {
                    best = length;
                    break;
                }
            }
        }
        return best;
    }
}
