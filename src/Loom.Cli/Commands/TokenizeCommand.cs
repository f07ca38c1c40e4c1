using System.CommandLine;
using System.Text;
using Loom.Models.Gguf;
using Loom.Models.Tokenizers;

namespace Loom.Cli.Commands;

/// <summary>`loom tokenize`: token ids (or id/piece pairs) of a text under a model's vocabulary.</summary>
internal static class TokenizeCommand
{
    public static Command Create(CliConsole console)
    {
        var model = new Option<string?>("--model", "-m") { Description = "GGUF model (only its vocabulary is read)", HelpName = "PATH" };
        var file = new Option<string?>("--file", "-f") { Description = "tokenize this file's text", HelpName = "FILE" };
        var text = new Option<string?>("--text") { Description = "tokenize this text", HelpName = "TEXT" };
        var pieces = new Option<bool>("--pieces") { Description = "print one \"id<TAB>piece\" line per token" };
        var addSpecial = new Option<bool>("--add-special") { Description = "add BOS/EOS as the vocabulary asks" };
        var command = new Command("tokenize", "Tokenize text (from --text, --file or stdin); special-token text such as <|im_start|> becomes its token")
        {
            model, file, text, pieces, addSpecial,
        };
        command.SetAction(r => LoomCli.Guard(console, () =>
        {
            string path = LoomCli.RequireModelFile(r.GetValue(model));
            string input = ReadInput(r.GetValue(file), r.GetValue(text), console.In);
            using var gguf = GgufFile.Open(path);
            var tokenizer = Tokenizer.FromGguf(gguf);
            int[] ids = tokenizer.Encode(input, addSpecial: r.GetValue(addSpecial), parseSpecial: true);
            Write(tokenizer, ids, r.GetValue(pieces), console.Out);
            return 0;
        }));
        return command;
    }

    internal static string ReadInput(string? file, string? text, TextReader stdin)
    {
        if (file is not null && text is not null) throw new CliException("give either --file or --text, not both");
        if (text is not null) return text;
        if (file is not null) return File.ReadAllText(LoomCli.RequireInputFile(file, "input file"), Encoding.UTF8);
        return stdin.ReadToEnd();
    }

    internal static void Write(Tokenizer tokenizer, int[] ids, bool pieces, TextWriter o)
    {
        if (!pieces)
        {
            o.WriteLine(string.Join(' ', ids));
            return;
        }
        foreach (int id in ids)
            o.WriteLine($"{id}\t{Escape(Encoding.UTF8.GetString(tokenizer.TokenBytes(id, renderSpecial: true)))}");
    }

    /// <summary>Keeps a piece on its line: backslash, tab, newline and other control characters are escaped.</summary>
    internal static string Escape(string piece)
    {
        var sb = new StringBuilder(piece.Length);
        foreach (char c in piece)
        {
            sb.Append(c switch
            {
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                _ when char.IsControl(c) => $"\\x{(int)c:x2}",
                _ => c.ToString(),
            });
        }
        return sb.ToString();
    }
}
