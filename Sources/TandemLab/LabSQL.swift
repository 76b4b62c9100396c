/// Statements sent from the client machine's network (or the replica's), as the lab's users send them.
struct LabSQL {
    let layout: LabLayout

    func options(host: String? = nil, user: String = LabLayout.databaseUser, password: String = LabLayout.databasePassword) -> MySQLConnection.Options {
        var options = MySQLConnection.Options(
            host: host ?? layout.virtualAddress, port: LabLayout.mysqlPort, user: user, password: password)
        options.readTimeout = .seconds(10)
        return options
    }

    /// Runs statements on one connection from `machine`'s network namespace.
    func run(
        from machine: LabHost = .client, _ options: MySQLConnection.Options, _ statements: [String]
    ) throws(LabError) -> [MySQLConnection.Result] {
        try NetworkNamespace.run(layout.namespace(machine)) { () throws(LabError) -> [MySQLConnection.Result] in
            do throws(MySQLError) {
                let connection = try MySQLConnection.connect(options)
                defer { connection.close() }
                var results: [MySQLConnection.Result] = []
                for statement in statements { results.append(try connection.query(statement)) }
                return results
            } catch {
                throw LabError(.failed, "MariaDB at \(options.host): \(error)")
            }
        }
    }

    /// The name of the node that serves the VIP (@@hostname of the server the client reaches).
    func serverName() throws(LabError) -> String {
        let results = try run(options(), ["SELECT @@hostname"])
        return results.first?.rows.first?.first.flatMap { $0 } ?? "?"
    }
}
