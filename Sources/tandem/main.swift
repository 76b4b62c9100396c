import TandemCLI

// Global options may be written before the verb (`tandem --node n1 adm dump`) as well as after it; the parser
// wants them after, so move them there first.
let arguments = GlobalOptions.hoisted(Array(CommandLine.arguments.dropFirst()))
await TandemCommand.run(arguments: arguments)
