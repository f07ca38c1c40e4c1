using System.CommandLine;
using Loom.Server;
using Loom.Server.Engine;
using Microsoft.Extensions.Hosting;

namespace Loom.Cli.Commands;

/// <summary>`loom serve`: the OpenAI-compatible HTTP server with continuous batching.</summary>
internal static class ServeCommand
{
    public static Command Create(CliConsole console)
    {
        var model = new Option<string?>("--model", "-m") { Description = "GGUF model file (default: the built-in models/loom-primer.gguf)", HelpName = "PATH" };
        var host = new Option<string>("--host") { Description = "address to listen on (an IP address or localhost)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0 = any free port)", DefaultValueFactory = _ => 8080 };
        var apiKey = new Option<string?>("--api-key") { Description = "require 'Authorization: Bearer KEY' on /v1 requests", HelpName = "KEY" };
        var parallel = new Option<int>("--parallel", "-np") { Description = "sequences decoded together", DefaultValueFactory = _ => 4 };
        var context = new Option<int>("--ctx", "-c") { Description = "context size per sequence (0 = the model's trained context, capped at 4096)", DefaultValueFactory = _ => 0 };
        var queue = new Option<int>("--queue") { Description = "requests that may wait for a free sequence before new ones get 429", DefaultValueFactory = _ => 64 };
        var threads = new Option<int?>("--threads", "-t") { Description = "compute threads (default: all cores)" };
        var noHugePages = WeightPlacementOption.Create();
        var cacheType = CacheTypeOption.Create();
        var command = new Command("serve", "Serve a model over an OpenAI-compatible HTTP API") { model, host, port, apiKey, parallel, context, queue, threads, noHugePages, cacheType };
        command.SetAction(r => LoomCli.Guard(console, () =>
        {
            string path = LoomCli.ModelOrDefault(r.GetValue(model));
            EngineSettings.SetKernelThreads(r.GetValue(threads));
            var engineOptions = new EngineOptions
            {
                Parallel = r.GetValue(parallel),
                ContextSize = r.GetValue(context),
                QueueCapacity = r.GetValue(queue),
                CacheType = CacheTypeOption.Value(r, cacheType),
            };
            engineOptions.Validate();
            var serverOptions = new ServerOptions { Host = r.GetValue(host)!, Port = r.GetValue(port), ApiKey = r.GetValue(apiKey) };
            using var engine = LoomEngine.Load(path, engineOptions, WeightPlacementOption.LoadOptions(r, noHugePages));
            var app = LoomServer.Build(engine, serverOptions);
            app.Start();
            foreach (var address in LoomServer.Addresses(app))
                console.Error.WriteLine($"loom: serving '{engine.ModelId}' at {address} ({engine.Parallel} parallel × {engine.ContextSize} context)");
            app.WaitForShutdown();
            return 0;
        }));
        return command;
    }
}
