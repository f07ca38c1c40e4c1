using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using OpenAI.Chat;

namespace Loom.Server.Tests;

/// <summary>`loom serve` as a separate process, driven by the official OpenAI clients (.NET, and npm when node is present).</summary>
public sealed partial class ServeProcessTests
{
    private const string Key = "process-key";

    [Fact]
    public async Task LoomServe_AnswersTheOpenAiClients()
    {
        await using var server = await ServeProcess.StartAsync(["-m", RunningServer.StoriesPath, "--port", "0", "--parallel", "2", "--ctx", "256", "--api-key", Key]);
        var client = new OpenAI.OpenAIClient(new System.ClientModel.ApiKeyCredential(Key),
            new OpenAI.OpenAIClientOptions { Endpoint = new Uri(server.BaseUri, "v1"), NetworkTimeout = TimeSpan.FromSeconds(60) });
        var chat = client.GetChatClient("stories260K");
        var expected = Reference.Generate("Once upon a time", 24, 0, 0);
        var text = new System.Text.StringBuilder();
        await foreach (var update in chat.CompleteChatStreamingAsync([new UserChatMessage("Once upon a time")], new ChatCompletionOptions { MaxOutputTokenCount = 24, Temperature = 0 }))
            foreach (var part in update.ContentUpdate) text.Append(part.Text);
        Assert.Equal(expected.Output, text.ToString());

        if (NodeWithOpenAi() is not { } modules) return;
        string script = Path.Combine(AppContext.BaseDirectory, "npm", "openai-smoke.mjs");
        // Node resolves `openai` from the script's folder upwards: run a copy placed beside the installed package.
        string runnable = Path.Combine(modules, "openai-smoke.mjs");
        File.Copy(script, runnable, overwrite: true);
        var (exit, stdout, stderr) = await Run("node", [runnable, new Uri(server.BaseUri, "v1").ToString(), Key, "stories260K"], TimeSpan.FromMinutes(2));
        Assert.True(exit == 0, $"node script failed ({exit}): {stderr}");
        using var result = JsonDocument.Parse(stdout.Trim().Split('\n')[^1]);
        var r = result.RootElement;
        Assert.Equal(expected.Output, r.GetProperty("chat").GetString());
        Assert.Equal("length", r.GetProperty("chatFinish").GetString());
        Assert.Equal(expected.Output, r.GetProperty("streamed").GetString());
        Assert.Equal(24, r.GetProperty("streamedCompletionTokens").GetInt32());
        Assert.Equal(Reference.Generate("Lily and Ben", 16, 0, 0).Output, r.GetProperty("completion").GetString());
        Assert.Equal(401, r.GetProperty("wrongKey").GetInt32());
        Assert.Equal(404, r.GetProperty("unknownModel").GetInt32());
        Assert.Equal(400, r.GetProperty("badType").GetInt32());
    }

    [Fact]
    public async Task LoomServe_BadArguments_FailWithOneLine()
    {
        string loom = Path.Combine(AppContext.BaseDirectory, "loom.dll");
        var (exit, _, stderr) = await Run("dotnet", [loom, "serve", "-m", RunningServer.StoriesPath, "--parallel", "0"], TimeSpan.FromMinutes(1));
        Assert.Equal(1, exit);
        Assert.Contains("parallel", stderr);
        (exit, _, stderr) = await Run("dotnet", [loom, "serve", "-m", "/nonexistent/model.gguf"], TimeSpan.FromMinutes(1));
        Assert.Equal(1, exit);
        Assert.Contains("does not exist", stderr);
    }

    /// <summary>
    /// A folder with the `openai` npm package installed (once per test output folder), or null when node/npm are
    /// not on this machine. When they are, the install must succeed.
    /// </summary>
    private static string? NodeWithOpenAi()
    {
        if (FindOnPath("node") is null || FindOnPath("npm") is null) return null;
        string folder = Path.Combine(AppContext.BaseDirectory, "npm-openai");
        if (File.Exists(Path.Combine(folder, "node_modules", "openai", "package.json"))) return folder;
        Directory.CreateDirectory(folder);
        var (exit, _, stderr) = Run("npm", ["install", "--prefix", folder, "--no-audit", "--no-fund", "--silent", "openai@7.55.0"], TimeSpan.FromMinutes(4)).GetAwaiter().GetResult();
        Assert.True(exit == 0, $"npm install openai failed ({exit}): {stderr}");
        return folder;
    }

    private static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator)
            .Select(dir => Path.Combine(dir, name)).FirstOrDefault(File.Exists);

    private static async Task<(int Exit, string Stdout, string Stderr)> Run(string file, string[] args, TimeSpan timeout)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cancel = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cancel.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} did not finish within {timeout}");
        }
        return (process.ExitCode, await stdout, await stderr);
    }

    /// <summary>A `loom serve` child process; killed on dispose.</summary>
    private sealed partial class ServeProcess : IAsyncDisposable
    {
        private readonly Process _process;

        private ServeProcess(Process process, Uri baseUri)
        {
            _process = process;
            BaseUri = baseUri;
        }

        public Uri BaseUri { get; }

        public static async Task<ServeProcess> StartAsync(string[] args, IReadOnlyDictionary<string, string>? environment = null)
        {
            var info = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var (name, value) in environment ?? new Dictionary<string, string>()) info.Environment[name] = value;
            info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "loom.dll"));
            info.ArgumentList.Add("serve");
            foreach (var a in args) info.ArgumentList.Add(a);
            var process = Process.Start(info)!;
            try
            {
                using var cancel = new CancellationTokenSource(TimeSpan.FromMinutes(1));
                while (await process.StandardError.ReadLineAsync(cancel.Token) is { } line)
                {
                    var match = Serving().Match(line);
                    if (match.Success)
                    {
                        // Keep draining stderr so the child never blocks on a full pipe.
                        _ = process.StandardError.ReadToEndAsync();
                        _ = process.StandardOutput.ReadToEndAsync();
                        return new ServeProcess(process, new Uri(match.Groups[1].Value));
                    }
                }
                throw new InvalidOperationException("loom serve exited before it was serving");
            }
            catch
            {
                process.Kill(entireProcessTree: true);
                process.Dispose();
                throw;
            }
        }

        [GeneratedRegex(@"serving '.*' at (http://127\.0\.0\.1:\d+/)")]
        private static partial Regex Serving();

        public async ValueTask DisposeAsync()
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
            _process.Dispose();
        }
    }
}
