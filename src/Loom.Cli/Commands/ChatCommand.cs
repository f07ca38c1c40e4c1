using System.CommandLine;
using Loom.Inference;
using Loom.Inference.Chat;
using Loom.Inference.Generation;
using Loom.Models.Architectures;

namespace Loom.Cli.Commands;

/// <summary>`loom chat`: an interactive conversation that streams replies and keeps the history in the KV cache.</summary>
internal static class ChatCommand
{
    public static Command Create(CliConsole console)
    {
        var run = new ModelRunOptions(defaultMaxTokens: 512);
        var system = new Option<string?>("--system") { Description = "system prompt", HelpName = "TEXT" };
        var command = new Command("chat", "Chat with a model interactively (/exit or end of input quits)");
        run.AddTo(command);
        command.Add(system);
        command.SetAction(r => LoomCli.Guard(console, () =>
        {
            string modelPath = LoomCli.ModelOrDefault(r.GetValue(run.Model));
            var options = run.Generation(r);
            int contextSize = run.ContextSize(r);
            EngineSettings.SetKernelThreads(r.GetValue(run.Threads));

            using var model = TransformerModel.Load(modelPath, run.Load(r));
            using var session = new InferenceSession(model, contextSize, run.Cache(r));
            var generator = Generator.ForModel(model, session);
            var conversation = new ChatConversation(generator, r.GetValue(system));
            console.Error.WriteLine($"loom: chatting with {Path.GetFileName(modelPath)} ({generator.Template!.Family} template, " +
                                    $"{session.ContextSize}-token context); /exit or end of input quits");
            Converse(conversation, options, console);
            return 0;
        }));
        return command;
    }

    internal static void Converse(ChatConversation conversation, GenerationOptions options, CliConsole console)
    {
        while (true)
        {
            console.Out.Write("> ");
            console.Out.Flush();
            string? line = console.In.ReadLine();
            if (line is null) { console.Out.WriteLine(); return; }
            line = line.Trim();
            if (line.Length == 0) continue;
            if (line is "/exit" or "/quit") return;
            try
            {
                var result = conversation.Reply(line, options, piece =>
                {
                    console.Out.Write(piece);
                    console.Out.Flush();
                });
                console.Out.WriteLine();
                console.Error.WriteLine($"[{result.PromptTokens} prompt tokens ({result.PrefillTokens} evaluated), " +
                                        $"{result.GeneratedTokens} generated, {result.DecodeTokensPerSecond:F1} tok/s, " +
                                        $"{GenerateCommand.FinishName(result.FinishReason)}]");
            }
            catch (PromptTooLongException e)
            {
                console.Error.WriteLine($"loom: error: {e.Message}");
            }
        }
    }
}
