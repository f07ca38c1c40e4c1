using Loom.Cli;

return LoomCli.Run(args, new CliConsole(Console.In, Console.Out, Console.Error,
    ErrorIsTerminal: !Console.IsErrorRedirected, OutputIsTerminal: !Console.IsOutputRedirected));
