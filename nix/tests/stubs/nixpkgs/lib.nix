# STAND-IN for nixpkgs' lib, for the offline checks only: the functions the flake's Nix
# files call, with the same names and meanings, and a small module system.
let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    hasAttr
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isPath
    isString
    listToAttrs
    mapAttrs
    stringLength
    substring
    zipAttrsWith
    ;

  optionalAttrs = condition: attrs: if condition then attrs else { };
  optional = condition: value: if condition then [ value ] else [ ];
  optionals = condition: list: if condition then list else [ ];
  optionalString = condition: string: if condition then string else "";
  hasPrefix = prefix: string: substring 0 (stringLength prefix) string == prefix;
  filterAttrs =
    predicate: attrs:
    listToAttrs (
      map (name: {
        inherit name;
        value = attrs.${name};
      }) (filter (name: predicate name attrs.${name}) (attrNames attrs))
    );
  mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (attrNames attrs);
  mapAttrs' = f: attrs: listToAttrs (map (name: f name attrs.${name}) (attrNames attrs));
  concatMapStringsSep = separator: f: list: concatStringsSep separator (map f list);
  boolToString = value: if value then "true" else "false";
  isDerivation = value: isAttrs value && (value.type or null) == "derivation";

  getExe =
    package:
    if package ? meta.mainProgram then
      "${package}/bin/${package.meta.mainProgram}"
    else
      throw "stand-in lib.getExe: ${package.name or "package"} has no meta.mainProgram";

  # lib.fileset over builtins.path: a fileset is a list of paths that exist.
  fileset = {
    unions =
      sets:
      concatLists (
        map (
          set:
          if isList set then
            set
          else if isPath set then
            (if builtins.pathExists set then [ set ] else throw "stand-in lib.fileset: ${toString set} does not exist")
          else
            throw "stand-in lib.fileset.unions: not a path or fileset"
        ) sets
      );
    maybeMissing = path: if builtins.pathExists path then [ path ] else [ ];
    toSource =
      { root, fileset }:
      let
        rootString = toString root;
        kept = map toString (if isList fileset then fileset else [ fileset ]);
        keep =
          path: _type:
          any (
            wanted: path == wanted || hasPrefix (wanted + "/") path || hasPrefix (path + "/") wanted
          ) kept;
      in
      assert all (wanted: hasPrefix rootString wanted) kept;
      builtins.path {
        path = root;
        name = "source";
        filter = keep;
      };
  };

  # The module system (only what the flake's NixOS module needs).
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption =
    name:
    mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = "Whether to enable ${name}.";
    };
  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };

  isType = kind: value: isAttrs value && (value._type or null) == kind;

  simpleType = name: check: {
    inherit name check;
    kind = "scalar";
  };

  types = {
    str = simpleType "str" isString;
    int = simpleType "int" isInt;
    bool = simpleType "bool" isBool;
    port = simpleType "port" (value: isInt value && value >= 0 && value <= 65535);
    path = simpleType "path" (value: isPath value || (isString value && hasPrefix "/" value));
    package = simpleType "package" isDerivation;
    ints = {
      positive = simpleType "positive integer" (value: isInt value && value > 0);
      unsigned = simpleType "unsigned integer" (value: isInt value && value >= 0);
    };
    enum = values: simpleType "one of ${concatStringsSep ", " values}" (value: elem value values);
    oneOf =
      choices:
      simpleType "one of several types" (value: any (choice: choice.check value) choices);
    nullOr = inner: {
      name = "null or ${inner.name}";
      kind = "nullOr";
      inherit inner;
      check = value: value == null || inner.check value;
    };
    listOf = inner: {
      name = "list of ${inner.name}";
      kind = "list";
      inherit inner;
      check = value: isList value && all inner.check value;
    };
    attrsOf = inner: {
      name = "attribute set of ${inner.name}";
      kind = "attrs";
      inherit inner;
      check = isAttrs;
    };
    submodule = module: {
      name = "submodule";
      kind = "submodule";
      inherit module;
      check = isAttrs;
    };
  };

  # A definition's properties are pushed into its attributes without evaluating any
  # condition, as the real module system does, so a module may guard its whole config
  # with mkIf on one of its own options.
  pushDown =
    definition:
    if isType "if" definition then
      mapAttrs (_: map (inner: mkIf definition.condition inner)) (pushDown definition.content)
    else if isType "merge" definition then
      zipAttrsWith (_: concatLists) (map pushDown definition.contents)
    else if isType "override" definition then
      mapAttrs (_: map (inner: mkOverride definition.priority inner)) (pushDown definition.content)
    else if isAttrs definition && !isDerivation definition then
      mapAttrs (_: value: [ value ]) definition
    else
      throw "stand-in module system: expected an attribute set, got ${builtins.typeOf definition}";

  discharge =
    definition:
    if isType "if" definition then
      (if definition.condition then discharge definition.content else [ ])
    else if isType "merge" definition then
      concatLists (map discharge definition.contents)
    else if isType "override" definition then
      map (inner: inner // { priority = definition.priority; }) (discharge definition.content)
    else
      [
        {
          priority = 100;
          value = definition;
        }
      ];

  showPath = path: concatStringsSep "." path;

  # The values of the definitions with the best (lowest) priority.
  winning =
    definitions:
    let
      best = foldl' (low: definition: if definition.priority < low then definition.priority else low) 10000 definitions;
    in
    map (definition: definition.value) (filter (definition: definition.priority == best) definitions);

  optionValue =
    path: option: definitions:
    let
      defaults = optional (option ? default) {
        priority = 1500;
        value = option.default;
      };
      values = winning (concatLists (map discharge definitions) ++ defaults);
    in
    if values == [ ] then
      throw "stand-in module system: option ${showPath path} is used but not defined"
    else
      mergeValues path option.type values;

  mergeValues =
    path: type: values:
    let
      merged =
        if type.kind == "submodule" then
          evalSubmodule path type.module values
        else if type.kind == "attrs" then
          let
            byName = zipAttrsWith (_: definitions: definitions) values;
          in
          filterAttrs (_: result: result.present) (
            mapAttrs (
              name: definitions:
              let
                inner = winning (concatLists (map discharge definitions));
              in
              {
                present = inner != [ ];
                value = mergeValues (path ++ [ name ]) type.inner inner;
              }
            ) byName
          )
        else if type.kind == "list" then
          let
            elements = concatLists values;
          in
          if type.inner.kind == "submodule" then
            map (element: evalSubmodule path type.inner.module [ element ]) elements
          else
            elements
        else if type.kind == "nullOr" then
          (
            if all (value: value == null) values then
              null
            else
              mergeValues path type.inner (filter (value: value != null) values)
          )
        else if all (value: value == builtins.head values) values then
          builtins.head values
        else
          throw "stand-in module system: option ${showPath path} has conflicting definitions";
      checked =
        if type.kind == "attrs" then
          mapAttrs (_: result: result.value) merged
        else if type.kind == "submodule" || type.check merged then
          merged
        else
          throw "stand-in module system: option ${showPath path} is not of type ${type.name}";
    in
    checked;

  # Evaluates option declarations (a tree whose leaves are mkOption values) against
  # definitions (attribute sets, possibly wrapped in mkIf, mkMerge or mkOverride).
  evalTree =
    path: declarations: freeformType: definitions:
    let
      byName = zipAttrsWith (_: concatLists) (map pushDown definitions);
      declared = mapAttrs (
        name: declaration:
        let
          inner = byName.${name} or [ ];
        in
        if isType "option" declaration then
          optionValue (path ++ [ name ]) declaration inner
        else
          evalTree (path ++ [ name ]) declaration null inner
      ) declarations;
      undeclaredNames = filter (name: !(hasAttr name declarations)) (attrNames byName);
      freeform =
        if freeformType == null then
          (
            if undeclaredNames == [ ] then
              { }
            else
              throw "stand-in module system: option ${
                showPath (path ++ [ (builtins.head undeclaredNames) ])
              } does not exist"
          )
        else
          mergeValues path freeformType [ (filterAttrs (name: _: elem name undeclaredNames) byNameAsValues) ];
      # The undeclared attributes as one definition of the freeform attrsOf type.
      byNameAsValues = mapAttrs (_: definitions: mkMerge definitions) byName;
    in
    freeform // declared;

  # Collects a module and its imports into { options; config; } records.
  collect =
    arguments: module:
    let
      loaded = if isPath module then import module else module;
      value = if isFunction loaded then loaded arguments else loaded;
      shorthand = !(value ? options || value ? config || value ? freeformType);
      self = {
        freeformType = value.freeformType or null;
        options = value.options or { };
        config = if shorthand then removeAttrs value [ "imports" ] else value.config or { };
      };
    in
    [ self ] ++ concatLists (map (collect arguments) (value.imports or [ ]));

  mergeDeclarations =
    trees:
    zipAttrsWith (
      name: values:
      if builtins.length values == 1 then
        builtins.head values
      else if any (isType "option") values then
        throw "stand-in module system: option ${name} is declared twice"
      else
        mergeDeclarations values
    ) trees;

  evalSubmodule =
    path: module: definitions:
    let
      arguments = {
        config = result;
        name = "submodule";
        lib = lib;
      };
      modules = collect arguments module;
      declarations = mergeDeclarations (map (record: record.options) modules);
      freeformType = (builtins.head modules).freeformType;
      ownDefinitions = map (record: record.config) modules;
      result = evalTree path declarations freeformType (ownDefinitions ++ definitions);
    in
    result;

  evalModules =
    { modules, specialArgs }:
    let
      arguments = specialArgs // {
        inherit config;
        options = { };
      };
      records = concatLists (map (collect arguments) modules);
      declarations = mergeDeclarations (map (record: record.options) records);
      config = evalTree [ ] declarations null (map (record: record.config) records);
    in
    {
      inherit config;
    };

  lib = {
    inherit
      optionalAttrs
      optional
      optionals
      optionalString
      hasPrefix
      filterAttrs
      concatMapStringsSep
      boolToString
      isDerivation
      getExe
      fileset
      mkOption
      mkEnableOption
      mkIf
      mkMerge
      mkOverride
      mkDefault
      mkForce
      literalExpression
      types
      evalModules
      all
      any
      mapAttrs
      mapAttrsToList
      mapAttrs'
      ;
    importTOML = path: builtins.fromTOML (builtins.readFile path);
    licenses.mit = {
      spdxId = "MIT";
    };
    platforms = {
      linux = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      darwin = [
        "x86_64-darwin"
        "aarch64-darwin"
      ];
    };
  };
in
lib
