using System.CommandLine;
using Loom.Cli.Commands;
using Loom.Models.Gguf;

namespace Loom.Cli;

/// <summary>The `loom` command line: generate, chat, inspect, tokenize, tokenizer, train, perplexity, serve, bench.</summary>
public static class LoomCli
{
    public static int Run(string[] args, CliConsole console)
    {
        var root = new RootCommand("Loom: run GGUF transformer language models on the CPU")
        {
            GenerateCommand.Create(console),
            ChatCommand.Create(console),
            InspectCommand.Create(console),
            TokenizeCommand.Create(console),
            TokenizerCommand.Create(console),
            TrainCommand.Create(console),
            PerplexityCommand.Create(console),
            ServeCommand.Create(console),
            BenchCommand.Create(console),
        };
        var parsed = root.Parse(args);
        return parsed.Invoke(new InvocationConfiguration { Output = console.Out, Error = console.Error, EnableDefaultExceptionHandler = false });
    }

    /// <summary>Runs a command body, turning expected failures into one line on stderr and exit code 1.</summary>
    internal static int Guard(CliConsole console, Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e)
        {
            console.Error.WriteLine($"loom: error: {Describe(e)}");
            return 1;
        }
    }

    private static string Describe(Exception e) => e switch
    {
        CliException or GgufFormatException or IOException or UnauthorizedAccessException or ArgumentException
            or InvalidOperationException or FormatException or InvalidDataException => e.Message,
        // Anything else is a bug; name the exception type so it can be reported, but still keep it to one line.
        _ => $"{e.GetType().Name}: {e.Message}",
    };

    /// <summary>Fails clearly when the model path is missing or not a file.</summary>
    internal static string RequireModelFile(string? path)
    {
        if (string.IsNullOrWhiteSpace(path))
            throw new CliException("a model is required: pass -m/--model PATH.gguf");
        if (Directory.Exists(path)) throw new CliException($"model path '{path}' is a directory, not a GGUF file");
        if (!File.Exists(path)) throw new CliException($"model file '{path}' does not exist");
        return path;
    }

    /// <summary>
    /// The small model trained by scripts/default-model/train.sh, copied beside the executable at build time: what the
    /// model-running commands use when no -m is given.
    /// </summary>
    public static string DefaultModelPath => Path.Combine(AppContext.BaseDirectory, "models", "loom-primer.gguf");

    /// <summary>The model to run: the -m path (checked), or the default model when none is given.</summary>
    internal static string ModelOrDefault(string? path)
    {
        if (!string.IsNullOrWhiteSpace(path)) return RequireModelFile(path);
        if (!File.Exists(DefaultModelPath))
            throw new CliException($"no -m/--model given and the default model is missing ({DefaultModelPath}); pass -m PATH.gguf");
        return DefaultModelPath;
    }

    internal static string RequireInputFile(string path, string what)
    {
        if (!File.Exists(path)) throw new CliException($"{what} '{path}' does not exist");
        return path;
    }
}
