using System.CommandLine;
using System.Globalization;
using System.Text;
using Loom.Core;
using Loom.Models.Gguf;

namespace Loom.Cli.Commands;

/// <summary>`loom inspect`: a GGUF file's header, metadata (long values summarized) and tensors.</summary>
internal static class InspectCommand
{
    private const int ShownArrayElements = 8;
    private const int ShownStringChars = 120;

    public static Command Create(CliConsole console)
    {
        var path = new Argument<string>("model") { Description = "GGUF file" };
        var command = new Command("inspect", "Show a GGUF file's metadata and tensors") { path };
        command.SetAction(r => LoomCli.Guard(console, () =>
        {
            string file = LoomCli.RequireModelFile(r.GetValue(path));
            using var gguf = GgufFile.Open(file);
            Write(gguf, console.Out);
            return 0;
        }));
        return command;
    }

    internal static void Write(GgufFile gguf, TextWriter o)
    {
        var inv = CultureInfo.InvariantCulture;
        o.WriteLine($"file: {gguf.Path}");
        o.WriteLine($"GGUF v{gguf.Version}, {Bytes(gguf.FileSize)}, alignment {gguf.Alignment}, tensor data at byte {gguf.DataStart}");
        o.WriteLine();
        o.WriteLine($"metadata ({gguf.MetadataKeys.Count} keys):");
        int keyWidth = gguf.MetadataKeys.Count == 0 ? 0 : gguf.MetadataKeys.Max(k => k.Length);
        foreach (string key in gguf.MetadataKeys)
            o.WriteLine($"  {key.PadRight(keyWidth)} = {FormatValue(gguf.Metadata[key])}");
        o.WriteLine();

        var tensors = gguf.Tensors;
        o.WriteLine($"tensors ({tensors.Count}):");
        int nameWidth = Math.Max(4, tensors.Count == 0 ? 0 : tensors.Max(t => t.Name.Length));
        var shapes = tensors.Select(t => "[" + string.Join(", ", t.Dimensions.Select(d => d.ToString(inv))) + "]").ToArray();
        int shapeWidth = Math.Max(5, shapes.Length == 0 ? 0 : shapes.Max(s => s.Length));
        o.WriteLine($"  {"name".PadRight(nameWidth)}  {"type",-7}  {"shape".PadRight(shapeWidth)}  {"elements",13}  {"size",10}");
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            o.WriteLine($"  {t.Name.PadRight(nameWidth)}  {t.Type,-7}  {shapes[i].PadRight(shapeWidth)}  {t.ElementCount.ToString("N0", inv),13}  {Bytes(t.ByteSize),10}");
        }
        o.WriteLine();

        long elements = tensors.Sum(t => t.ElementCount), bytes = tensors.Sum(t => t.ByteSize);
        o.WriteLine($"total: {tensors.Count} tensors, {elements.ToString("N0", inv)} parameters, {Bytes(bytes)}" +
                    (elements > 0 ? $" ({bytes * 8.0 / elements:F2} bits per parameter)" : ""));
        foreach (var group in tensors.GroupBy(t => t.Type).OrderByDescending(g => g.Sum(t => t.ByteSize)))
            o.WriteLine($"  {group.Key,-7} {group.Count(),5} tensors  {group.Sum(t => t.ElementCount).ToString("N0", inv),15} parameters  {Bytes(group.Sum(t => t.ByteSize)),10}");
    }

    internal static string FormatValue(GgufValue value)
    {
        if (value.Value is string s) return Quote(s);
        if (value.Value is Array array)
        {
            var shown = array.Cast<object>().Take(ShownArrayElements).Select(FormatScalar);
            string more = array.Length > ShownArrayElements ? $", … ({array.Length - ShownArrayElements} more)" : "";
            return $"[{value.ElementType} × {array.Length}] [{string.Join(", ", shown)}{more}]";
        }
        return FormatScalar(value.Value);
    }

    private static string FormatScalar(object v) => v switch
    {
        string s => Quote(s),
        bool b => b ? "true" : "false",
        float f => f.ToString("R", CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        _ => Convert.ToString(v, CultureInfo.InvariantCulture) ?? "",
    };

    /// <summary>A string on one line: control characters escaped, long text cut with its full length noted.</summary>
    private static string Quote(string s)
    {
        string shown = s.Length > ShownStringChars ? s[..ShownStringChars] : s;
        var sb = new StringBuilder("\"");
        foreach (char c in shown)
        {
            sb.Append(c switch
            {
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                '"' => "\\\"",
                '\\' => "\\\\",
                _ when char.IsControl(c) => $"\\u{(int)c:x4}",
                _ => c.ToString(),
            });
        }
        sb.Append('"');
        if (s.Length > ShownStringChars) sb.Append($"… ({s.Length} chars)");
        return sb.ToString();
    }

    internal static string Bytes(long n)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double v = n;
        int u = 0;
        while (v >= 1024 && u < units.Length - 1) { v /= 1024; u++; }
        return u == 0 ? $"{n} B" : $"{v.ToString("F2", CultureInfo.InvariantCulture)} {units[u]}";
    }
}
