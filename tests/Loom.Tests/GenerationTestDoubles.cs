using System.Text;
using Loom.Inference.Generation;

namespace Loom.Tests;

/// <summary>
/// A small vocabulary for generation tests: id 0 &lt;unk&gt;, 1 &lt;s&gt;, 2 &lt;/s&gt; (control), then the given pieces.
/// A piece "&lt;0xNN&gt;" is the raw byte NN; pieces written like "&lt;|...|&gt;" are control tokens.
/// Encode is greedy longest-match (control pieces only when parseSpecial).
/// </summary>
internal sealed class FakeTokenizer : ITokenCodec
{
    private readonly string[] _pieces;

    public FakeTokenizer(IEnumerable<string> pieces, bool addBos = true, int? endOfTurn = null)
    {
        _pieces = ["<unk>", "<s>", "</s>", .. pieces];
        AddBos = addBos;
        EndOfTurnId = endOfTurn;
    }

    public int? EndOfTurnId { get; }
    public int VocabSize => _pieces.Length;
    public int BosId => 1;
    public int EosId => 2;
    public bool AddBos { get; }

    public int Id(string piece) => Array.IndexOf(_pieces, piece) is var i and >= 0 ? i : throw new ArgumentException($"no piece {piece}");

    private bool IsControl(int id) => id is 1 or 2 || (_pieces[id].StartsWith("<|") && _pieces[id].EndsWith("|>"));
    private static bool IsByte(string p) => p.Length == 6 && p.StartsWith("<0x") && p.EndsWith('>');

    public int[] Encode(string text, bool addSpecial, bool parseSpecial)
    {
        var ids = new List<int>();
        if (addSpecial && AddBos) ids.Add(BosId);
        int at = 0;
        while (at < text.Length)
        {
            int best = -1, bestLength = 0;
            for (int id = 0; id < _pieces.Length; id++)
            {
                if (id == 0 || IsByte(_pieces[id]) || (IsControl(id) && !parseSpecial)) continue;
                string p = _pieces[id];
                if (p.Length > bestLength && string.CompareOrdinal(text, at, p, 0, p.Length) == 0) { best = id; bestLength = p.Length; }
            }
            if (best < 0) { ids.Add(0); at++; }
            else { ids.Add(best); at += bestLength; }
        }
        return [.. ids];
    }

    public string Piece(int id) => _pieces[id];

    public byte[] TokenBytes(int id, bool renderSpecial = false)
    {
        string p = _pieces[id];
        if (IsByte(p)) return [Convert.ToByte(p[3..5], 16)];
        if (IsControl(id) && !renderSpecial) return [];
        return Encoding.UTF8.GetBytes(p);
    }

    public bool IsEndOfGeneration(int id) => id == EosId || id == EndOfTurnId;
}

/// <summary>
/// A KV cache stand-in whose logits after each evaluation favour the token chosen by <c>nextToken</c> (given the
/// cache contents); it records what it was asked to evaluate.
/// </summary>
internal sealed class ScriptedEvaluator(int vocabSize, int contextSize, Func<IReadOnlyList<int>, int> nextToken) : ITokenEvaluator
{
    private readonly float[] _logits = new float[vocabSize];
    public List<int> Cache { get; } = [];
    public List<int[]> Calls { get; } = [];

    public int ContextSize => contextSize;
    public int VocabSize => vocabSize;
    public int Position => Cache.Count;
    /// <summary>The evaluation (counting from 0) that fails after appending half of its tokens, or -1.</summary>
    public int FailingCall { get; set; } = -1;

    public ReadOnlySpan<float> Evaluate(ReadOnlySpan<int> tokens)
    {
        if (tokens.IsEmpty) throw new ArgumentException("nothing to evaluate");
        if (Calls.Count == FailingCall)
        {
            Calls.Add(tokens.ToArray());
            Cache.AddRange(tokens[..(tokens.Length / 2)].ToArray());
            throw new IOException("simulated evaluation failure");
        }
        if (Cache.Count + tokens.Length > contextSize) throw new InvalidOperationException("context overflow");
        Calls.Add(tokens.ToArray());
        Cache.AddRange(tokens.ToArray());
        Array.Clear(_logits);
        _logits[nextToken(Cache)] = 10f;
        return _logits;
    }

    public void Truncate(int position)
    {
        if (position < 0 || position > Cache.Count) throw new ArgumentOutOfRangeException(nameof(position));
        Cache.RemoveRange(position, Cache.Count - position);
    }

    /// <summary>Each evaluation favours the next token of <paramref name="script"/>; after the script, the last one again.</summary>
    public static ScriptedEvaluator Script(int vocabSize, int contextSize, params int[] script)
    {
        int next = 0;
        return new(vocabSize, contextSize, _ => script[Math.Min(next++, script.Length - 1)]);
    }
}
