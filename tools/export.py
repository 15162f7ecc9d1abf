from ssps_nni.cli.export import main
raise SystemExit(main())
