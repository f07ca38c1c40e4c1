namespace Loom.Cli;

/// <summary>The streams a command talks to, so tests can run commands in-process.</summary>
public sealed record CliConsole(TextReader In, TextWriter Out, TextWriter Error, bool ErrorIsTerminal = false, bool OutputIsTerminal = false);

/// <summary>A problem with what the user asked for; reported as one line, without a stack trace.</summary>
public sealed class CliException(string message) : Exception(message);
