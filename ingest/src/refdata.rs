//! Reference data of SPEC §2: reading and writing `regions.csv` / `users.csv`, the 27
//! Brazilian state capitals, and deterministic synthetic regions and users.
//!
//! Reading is strict: every problem is reported with the file, the line and the
//! field, so a bad seed file is fixed in one look instead of surfacing later as a
//! wave of `unknown_reference` decisions.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vtpga_dataflow::model::{Region, User};

/// The 27 Brazilian federative units (26 states and the Federal District), in
/// alphabetical order of their codes. `capitals()` follows this order.
pub const UFS: [&str; 27] = [
    "AC", "AL", "AP", "AM", "BA", "CE", "DF", "ES", "GO", "MA", "MT", "MS", "MG", "PA", "PB", "PR",
    "PE", "PI", "RJ", "RN", "RS", "RO", "RR", "SC", "SP", "SE", "TO",
];

/// Header of `regions.csv` (SPEC §2).
pub const REGIONS_HEADER: [&str; 5] = ["id", "uf", "name", "lat", "lon"];
/// Header of `users.csv` (SPEC §2).
pub const USERS_HEADER: [&str; 5] = [
    "id",
    "name",
    "region_id",
    "balance_cents",
    "credit_limit_cents",
];

/// An error reading or writing reference data. Row errors carry the file, the
/// 1-based line number (the header is line 1) and the field.
#[derive(Debug, thiserror::Error)]
pub enum RefDataError {
    /// The file could not be opened, created or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CSV reader failed on a line (malformed CSV, text that is not UTF-8).
    #[error("{}: line {line}: malformed CSV: {source}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: u64,
        /// The CSV reader's error.
        #[source]
        source: csv::Error,
    },
    /// The header row lacks a required column.
    #[error("{}: header lacks the column `{column}` (expected {expected})", path.display())]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The missing column.
        column: &'static str,
        /// The required columns, comma-separated.
        expected: String,
    },
    /// A field's value is wrong (a missing value or empty id, a bad number or one out of
    /// range, an unknown `uf` or home region).
    #[error("{}: line {line}: field `{field}`: {message}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: u64,
        /// The column.
        field: &'static str,
        /// What is wrong with the value.
        message: String,
    },
    /// An id given on a second row.
    #[error("{}: line {line}: duplicate id {id:?} (first on line {first_line})", path.display())]
    DuplicateId {
        /// The file.
        path: PathBuf,
        /// The 1-based line number of the repeat.
        line: u64,
        /// The repeated id.
        id: String,
        /// The line on which the id first appears.
        first_line: u64,
    },
}

impl RefDataError {
    /// The line the error is about, when it is about one.
    pub fn line(&self) -> Option<u64> {
        match self {
            RefDataError::Csv { line, .. }
            | RefDataError::Field { line, .. }
            | RefDataError::DuplicateId { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// The field the error is about, when it is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RefDataError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Reading

/// A CSV file opened with its header mapped to column indices.
struct Table {
    path: PathBuf,
    reader: csv::Reader<File>,
    columns: Vec<usize>,
}

impl Table {
    fn open(path: &Path, wanted: &[&'static str]) -> Result<Table, RefDataError> {
        let file = File::open(path).map_err(|source| RefDataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(file);
        let headers = reader
            .headers()
            .map_err(|source| RefDataError::Csv {
                path: path.to_path_buf(),
                line: 1,
                source,
            })?
            .clone();
        let mut columns = Vec::with_capacity(wanted.len());
        for &column in wanted {
            match headers.iter().position(|h| h.trim() == column) {
                Some(i) => columns.push(i),
                None => {
                    return Err(RefDataError::MissingColumn {
                        path: path.to_path_buf(),
                        column,
                        expected: wanted.join(","),
                    })
                }
            }
        }
        Ok(Table {
            path: path.to_path_buf(),
            reader,
            columns,
        })
    }

    /// Calls `row` for every data row with a view that names the file and line.
    fn for_each_row(
        mut self,
        wanted: &[&'static str],
        mut row: impl FnMut(&Row<'_>) -> Result<(), RefDataError>,
    ) -> Result<(), RefDataError> {
        let mut record = csv::StringRecord::new();
        loop {
            let more =
                self.reader
                    .read_record(&mut record)
                    .map_err(|source| RefDataError::Csv {
                        path: self.path.clone(),
                        line: source
                            .position()
                            .map(|p| p.line())
                            .unwrap_or_else(|| self.reader.position().line()),
                        source,
                    })?;
            if !more {
                return Ok(());
            }
            // A completely empty line is not a row (csv already skips those), but a
            // line of only commas is one with empty fields and is reported as such.
            let line = record.position().map(|p| p.line()).unwrap_or(0);
            row(&Row {
                path: &self.path,
                line,
                record: &record,
                columns: &self.columns,
                names: wanted,
            })?;
        }
    }
}

struct Row<'a> {
    path: &'a Path,
    line: u64,
    record: &'a csv::StringRecord,
    columns: &'a [usize],
    names: &'a [&'static str],
}

impl Row<'_> {
    fn err(&self, field: &'static str, message: impl Into<String>) -> RefDataError {
        RefDataError::Field {
            path: self.path.to_path_buf(),
            line: self.line,
            field,
            message: message.into(),
        }
    }

    /// The raw text of the `i`-th wanted column; a row too short to hold it is an error.
    fn get(&self, i: usize) -> Result<&str, RefDataError> {
        let name = self.names[i];
        self.record
            .get(self.columns[i])
            .ok_or_else(|| self.err(name, "missing value (row has too few fields)"))
    }

    /// An id: exact text (no trimming, ids compare exactly), not empty.
    fn id(&self, i: usize) -> Result<String, RefDataError> {
        let v = self.get(i)?;
        if v.trim().is_empty() {
            return Err(self.err(self.names[i], "empty id"));
        }
        Ok(v.to_string())
    }

    fn cents(&self, i: usize) -> Result<i64, RefDataError> {
        let name = self.names[i];
        let v = self.get(i)?.trim();
        let n: i64 = v.parse().map_err(|_| {
            self.err(
                name,
                format!("bad number {v:?} (expected integer cents, e.g. 150000)"),
            )
        })?;
        if n < 0 {
            return Err(self.err(name, format!("negative amount {n} (must be >= 0)")));
        }
        Ok(n)
    }

    fn degrees(&self, i: usize, limit: f64) -> Result<f64, RefDataError> {
        let name = self.names[i];
        let v = self.get(i)?.trim();
        let x: f64 = v
            .parse()
            .map_err(|_| self.err(name, format!("bad number {v:?} (expected degrees)")))?;
        if !x.is_finite() || x < -limit || x > limit {
            return Err(self.err(
                name,
                format!("{v} out of range (must be within -{limit}..={limit})"),
            ));
        }
        Ok(x)
    }
}

fn check_unique(
    seen: &mut HashMap<String, u64>,
    path: &Path,
    id: &str,
    line: u64,
) -> Result<(), RefDataError> {
    if let Some(&first_line) = seen.get(id) {
        return Err(RefDataError::DuplicateId {
            path: path.to_path_buf(),
            line,
            id: id.to_string(),
            first_line,
        });
    }
    seen.insert(id.to_string(), line);
    Ok(())
}

/// Reads the table at `path` (columns `wanted`, the first one an id that must be
/// non-empty and unique): `parse` makes one item of each data row, given the row and
/// its id, in file order.
fn read_rows<T>(
    path: &Path,
    wanted: &[&'static str],
    mut parse: impl FnMut(&Row<'_>, String) -> Result<T, RefDataError>,
) -> Result<Vec<T>, RefDataError> {
    let table = Table::open(path, wanted)?;
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    table.for_each_row(wanted, |row| {
        let id = row.id(0)?;
        check_unique(&mut seen, path, &id, row.line)?;
        out.push(parse(row, id)?);
        Ok(())
    })?;
    Ok(out)
}

/// Reads `regions.csv` (`id,uf,name,lat,lon`; columns may come in any order and
/// extra columns are ignored). Ids must be non-empty and unique, `uf` one of
/// [`UFS`], `lat` within ±90 and `lon` within ±180.
pub fn read_regions(path: &Path) -> Result<Vec<Region>, RefDataError> {
    read_rows(path, &REGIONS_HEADER, |row, id| {
        let uf = row.get(1)?.trim();
        if !UFS.contains(&uf) {
            return Err(row.err(
                "uf",
                format!("{uf:?} is not one of the 27 Brazilian state codes"),
            ));
        }
        let uf = uf.to_string();
        let name = row.get(2)?.to_string();
        let lat = row.degrees(3, 90.0)?;
        let lon = row.degrees(4, 180.0)?;
        Ok(Region {
            id,
            uf,
            name,
            lat,
            lon,
        })
    })
}

/// Reads `users.csv` (`id,name,region_id,balance_cents,credit_limit_cents`; any
/// column order, extra columns ignored). Ids and region ids must be non-empty, ids
/// unique, and the two amounts integer cents >= 0. Whether `region_id` names a known
/// region is checked by [`check_user_regions`].
pub fn read_users(path: &Path) -> Result<Vec<User>, RefDataError> {
    read_rows(path, &USERS_HEADER, |row, id| {
        let name = row.get(1)?.to_string();
        let region_id = row.id(2)?;
        let balance_cents = row.cents(3)?;
        let credit_limit_cents = row.cents(4)?;
        Ok(User {
            id,
            name,
            region_id,
            balance_cents,
            credit_limit_cents,
        })
    })
}

/// Checks that every user's home region is one of `regions`; the error names the
/// users file (`users_path`) and the data line of the first offending user (users
/// are assumed to be in file order, as [`read_users`] returns them).
pub fn check_user_regions(
    users_path: &Path,
    regions: &[Region],
    users: &[User],
) -> Result<(), RefDataError> {
    let known: std::collections::HashSet<&str> = regions.iter().map(|r| r.id.as_str()).collect();
    for (i, u) in users.iter().enumerate() {
        if !known.contains(u.region_id.as_str()) {
            return Err(RefDataError::Field {
                path: users_path.to_path_buf(),
                line: i as u64 + 2,
                field: "region_id",
                message: format!("unknown region {:?} for user {:?}", u.region_id, u.id),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Writing

/// Writes the table at `path`: the `header` row, then one row per item, the fields
/// `fields` gives in header order, each written as it displays.
fn write_rows<T, const N: usize>(
    path: &Path,
    header: [&str; N],
    items: &[T],
    fields: impl Fn(&T) -> [&dyn std::fmt::Display; N],
) -> Result<(), RefDataError> {
    let io_err = |source| RefDataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io_err)?;
    let mut w = csv::Writer::from_writer(BufWriter::new(file));
    let e = |e: csv::Error| io_err(e.into());
    w.write_record(header).map_err(e)?;
    for item in items {
        w.write_record(fields(item).map(|f| f.to_string()))
            .map_err(e)?;
    }
    w.flush().map_err(io_err)
}

/// Writes `regions.csv`, header row first. Coordinates are written in Rust's
/// shortest round-trip form, so [`read_regions`] gives back the same values.
pub fn write_regions(path: &Path, regions: &[Region]) -> Result<(), RefDataError> {
    write_rows(path, REGIONS_HEADER, regions, |r| {
        [&r.id, &r.uf, &r.name, &r.lat, &r.lon]
    })
}

/// Writes `users.csv`, header row first.
pub fn write_users(path: &Path, users: &[User]) -> Result<(), RefDataError> {
    write_rows(path, USERS_HEADER, users, |u| {
        [
            &u.id,
            &u.name,
            &u.region_id,
            &u.balance_cents,
            &u.credit_limit_cents,
        ]
    })
}

// ---------------------------------------------------------------------------
// Capitals

/// One capital: uf, name, lat, lon, metro population (millions, a weight only),
/// and where its hinterland lies: (bearing of the inland direction in degrees,
/// half-width of the allowed bearing fan in degrees, max distance in km) so that
/// synthetic interior towns stay on land and inside the same state.
struct Capital {
    uf: &'static str,
    name: &'static str,
    lat: f64,
    lon: f64,
    pop: f64,
    bearing: f64,
    fan: f64,
    max_km: f64,
}

#[allow(clippy::too_many_arguments)]
const fn cap(
    uf: &'static str,
    name: &'static str,
    lat: f64,
    lon: f64,
    pop: f64,
    bearing: f64,
    fan: f64,
    max_km: f64,
) -> Capital {
    Capital {
        uf,
        name,
        lat,
        lon,
        pop,
        bearing,
        fan,
        max_km,
    }
}

/// In [`UFS`] order.
const CAPITALS: [Capital; 27] = [
    cap(
        "AC",
        "Rio Branco",
        -9.9754,
        -67.8249,
        0.42,
        270.0,
        60.0,
        250.0,
    ),
    cap("AL", "Maceió", -9.6658, -35.7353, 1.03, 290.0, 50.0, 120.0),
    cap("AP", "Macapá", 0.0349, -51.0694, 0.51, 315.0, 45.0, 200.0),
    cap("AM", "Manaus", -3.1190, -60.0217, 2.26, 0.0, 180.0, 250.0),
    cap(
        "BA", "Salvador", -12.9714, -38.5014, 2.90, 300.0, 50.0, 250.0,
    ),
    cap(
        "CE",
        "Fortaleza",
        -3.7319,
        -38.5267,
        2.70,
        200.0,
        60.0,
        250.0,
    ),
    cap("DF", "Brasília", -15.7939, -47.8828, 3.09, 0.0, 180.0, 30.0),
    cap(
        "ES", "Vitória", -20.3155, -40.3128, 0.37, 280.0, 40.0, 100.0,
    ),
    cap("GO", "Goiânia", -16.6869, -49.2648, 1.56, 0.0, 180.0, 150.0),
    cap(
        "MA",
        "São Luís",
        -2.5307,
        -44.3068,
        1.11,
        180.0,
        50.0,
        250.0,
    ),
    cap("MT", "Cuiabá", -15.6014, -56.0979, 0.65, 0.0, 180.0, 200.0),
    cap(
        "MS",
        "Campo Grande",
        -20.4697,
        -54.6201,
        0.91,
        0.0,
        180.0,
        200.0,
    ),
    cap(
        "MG",
        "Belo Horizonte",
        -19.9167,
        -43.9345,
        2.52,
        0.0,
        180.0,
        250.0,
    ),
    cap("PA", "Belém", -1.4558, -48.4902, 1.50, 180.0, 40.0, 250.0),
    cap(
        "PB",
        "João Pessoa",
        -7.1195,
        -34.8450,
        0.83,
        270.0,
        20.0,
        200.0,
    ),
    cap(
        "PR", "Curitiba", -25.4284, -49.2733, 1.96, 290.0, 40.0, 250.0,
    ),
    cap("PE", "Recife", -8.0476, -34.8770, 1.66, 270.0, 20.0, 250.0),
    cap(
        "PI", "Teresina", -5.0920, -42.8038, 0.87, 120.0, 50.0, 200.0,
    ),
    cap(
        "RJ",
        "Rio de Janeiro",
        -22.9068,
        -43.1729,
        6.75,
        60.0,
        30.0,
        150.0,
    ),
    cap("RN", "Natal", -5.7945, -35.2110, 0.90, 230.0, 40.0, 200.0),
    cap(
        "RS",
        "Porto Alegre",
        -30.0346,
        -51.2177,
        1.49,
        300.0,
        60.0,
        250.0,
    ),
    cap(
        "RO",
        "Porto Velho",
        -8.7612,
        -63.9004,
        0.55,
        135.0,
        45.0,
        250.0,
    ),
    cap(
        "RR",
        "Boa Vista",
        2.8235,
        -60.6758,
        0.44,
        225.0,
        60.0,
        200.0,
    ),
    cap(
        "SC",
        "Florianópolis",
        -27.5954,
        -48.5480,
        0.54,
        270.0,
        40.0,
        200.0,
    ),
    cap(
        "SP",
        "São Paulo",
        -23.5505,
        -46.6333,
        12.33,
        315.0,
        60.0,
        250.0,
    ),
    cap(
        "SE", "Aracaju", -10.9472, -37.0731, 0.67, 290.0, 40.0, 100.0,
    ),
    cap("TO", "Palmas", -10.1840, -48.3336, 0.31, 0.0, 180.0, 200.0),
];

fn region_id(i: usize) -> String {
    format!("r{:03}", i + 1)
}

/// The 27 state capitals, ids `r001`..`r027` in [`UFS`] order (r001 = Rio Branco/AC,
/// r025 = São Paulo/SP), with their real coordinates.
pub fn capitals() -> Vec<Region> {
    CAPITALS
        .iter()
        .enumerate()
        .map(|(i, c)| Region {
            id: region_id(i),
            uf: c.uf.to_string(),
            name: c.name.to_string(),
            lat: c.lat,
            lon: c.lon,
        })
        .collect()
}

/// The metro population weight (millions) of a state's capital; 0.5 for an unknown uf.
fn uf_weight(uf: &str) -> f64 {
    CAPITALS
        .iter()
        .find(|c| c.uf == uf)
        .map(|c| c.pop)
        .unwrap_or(0.5)
}

fn is_capital(r: &Region) -> bool {
    CAPITALS.iter().any(|c| c.uf == r.uf && c.name == r.name)
}

/// Great-circle distance in km: SPEC §6's, the one the rules use.
pub use vtpga_dataflow::rules::haversine_km;

/// The point `dist_km` from (lat, lon) along the initial bearing `bearing_deg`.
fn destination(lat: f64, lon: f64, bearing_deg: f64, dist_km: f64) -> (f64, f64) {
    let d = dist_km / 6371.0;
    let th = bearing_deg.to_radians();
    let p1 = lat.to_radians();
    let l1 = lon.to_radians();
    let p2 = (p1.sin() * d.cos() + p1.cos() * d.sin() * th.cos()).asin();
    let l2 = l1 + (th.sin() * d.sin() * p1.cos()).atan2(d.cos() - p1.sin() * p2.sin());
    let mut lon2 = l2.to_degrees();
    if lon2 > 180.0 {
        lon2 -= 360.0;
    } else if lon2 < -180.0 {
        lon2 += 360.0;
    }
    (p2.to_degrees(), lon2)
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Picks an index with probability proportional to `cum[i] - cum[i-1]`.
pub(crate) fn pick_weighted(rng: &mut ChaCha8Rng, cum: &[f64]) -> usize {
    let total = *cum.last().expect("non-empty weights");
    let x = rng.random::<f64>() * total;
    cum.partition_point(|&c| c <= x).min(cum.len() - 1)
}

pub(crate) fn cumulative(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .into_iter()
        .map(|w| {
            acc += w.max(0.0);
            acc
        })
        .collect()
}

/// The capitals plus `extra` synthetic interior towns, ids continuing `r028`, ….
///
/// Each town belongs to a capital (chosen with weight by the capital's metro
/// population), lies 10–250 km from it inland (within a per-state radius and
/// direction fan, so it stays in the same state) and is named
/// "`<capital> – Interior <n>`". Every fourth town (the first included) lies 10–45 km
/// from its capital, so with `extra >= 1` the regions contain pairs in all four
/// SPEC §7 distance bands (< 50, 50–300, 300–1000, >= 1000 km); the capitals alone
/// already give the last three (e.g. Recife–João Pessoa ≈ 104 km, São Paulo–Rio
/// ≈ 360 km, São Paulo–Manaus ≈ 2,690 km). Deterministic for a seed.
pub fn generate_regions(extra: usize, seed: u64) -> Vec<Region> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5245_4749_4f4e_5321);
    let mut out = capitals();
    let cum = cumulative(CAPITALS.iter().map(|c| c.pop.sqrt()));
    let mut per_capital = [0usize; 27];
    for i in 0..extra {
        let ci = pick_weighted(&mut rng, &cum);
        let c = &CAPITALS[ci];
        let max_km = c.max_km.clamp(11.0, 250.0);
        let dist = if i % 4 == 0 {
            rng.random_range(10.0..45.0f64.min(max_km))
        } else {
            rng.random_range(10.0..max_km)
        };
        let bearing = c.bearing + rng.random_range(-c.fan..=c.fan);
        let (lat, lon) = destination(c.lat, c.lon, bearing, dist);
        per_capital[ci] += 1;
        out.push(Region {
            id: region_id(27 + i),
            uf: c.uf.to_string(),
            name: format!("{} – Interior {}", c.name, per_capital[ci]),
            lat: round4(lat),
            lon: round4(lon),
        });
    }
    out
}

// ---------------------------------------------------------------------------
// Users

const FIRST_NAMES: [&str; 50] = [
    "Ana",
    "Maria",
    "João",
    "José",
    "Pedro",
    "Lucas",
    "Gabriel",
    "Mariana",
    "Juliana",
    "Fernanda",
    "Camila",
    "Beatriz",
    "Larissa",
    "Rafael",
    "Bruno",
    "Carlos",
    "Paulo",
    "Marcos",
    "Felipe",
    "Gustavo",
    "Thiago",
    "Matheus",
    "Leonardo",
    "Rodrigo",
    "Luiz",
    "Antônio",
    "Francisco",
    "Letícia",
    "Amanda",
    "Patrícia",
    "Aline",
    "Vanessa",
    "Luana",
    "Sofia",
    "Helena",
    "Alice",
    "Laura",
    "Valentina",
    "Isabela",
    "Heitor",
    "Arthur",
    "Davi",
    "Bernardo",
    "Enzo",
    "Miguel",
    "Raimundo",
    "Sebastião",
    "Conceição",
    "Francisca",
    "Adriana",
];

const LAST_NAMES: [&str; 40] = [
    "Silva",
    "Santos",
    "Oliveira",
    "Souza",
    "Rodrigues",
    "Ferreira",
    "Alves",
    "Pereira",
    "Lima",
    "Gomes",
    "Costa",
    "Ribeiro",
    "Martins",
    "Carvalho",
    "Almeida",
    "Lopes",
    "Soares",
    "Fernandes",
    "Vieira",
    "Barbosa",
    "Rocha",
    "Dias",
    "Nascimento",
    "Andrade",
    "Moreira",
    "Nunes",
    "Marques",
    "Machado",
    "Mendes",
    "Freitas",
    "Cardoso",
    "Ramos",
    "Gonçalves",
    "Santana",
    "Teixeira",
    "Araújo",
    "Melo",
    "Cavalcanti",
    "Monteiro",
    "Batista",
];

/// A user id: `u` and the 1-based number zero-padded to at least 6 digits.
pub fn user_id(n: usize) -> String {
    format!("u{n:06}")
}

/// A log-uniform integer in `[lo, hi)`.
fn log_uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    (rng.random_range(lo.ln()..hi.ln())).exp()
}

/// `n` users `u000001`, … with Portuguese names, homes weighted toward big capitals
/// (a capital weighs its metro population, an interior town a tenth of its state
/// capital's), balances with a heavy tail (≈5% zero, ≈83% 50–5,000 BRL, ≈10%
/// 5,000–100,000, ≈2% 100,000–2,000,000) and credit limits (≈20% none, ≈75%
/// 500–20,000 BRL in steps of 100, ≈5% 20,000–100,000). Deterministic for a seed.
///
/// Panics if `n > 0` and `regions` is empty.
pub fn generate_users(n: usize, regions: &[Region], seed: u64) -> Vec<User> {
    assert!(
        n == 0 || !regions.is_empty(),
        "generate_users needs at least one region"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5553_4552_5321_0000);
    let cum = cumulative(regions.iter().map(|r| {
        let w = uf_weight(&r.uf);
        if is_capital(r) {
            w
        } else {
            w * 0.1
        }
    }));
    (0..n)
        .map(|i| {
            let first = FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())];
            let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
            let name = if rng.random_bool(0.3) {
                let middle = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
                format!("{first} {middle} {last}")
            } else {
                format!("{first} {last}")
            };
            let region = &regions[pick_weighted(&mut rng, &cum)];
            let u = rng.random::<f64>();
            let balance_cents = if u < 0.05 {
                0
            } else if u < 0.88 {
                (log_uniform(&mut rng, 50.0, 5_000.0) * 100.0) as i64
            } else if u < 0.98 {
                (log_uniform(&mut rng, 5_000.0, 100_000.0) * 100.0) as i64
            } else {
                (log_uniform(&mut rng, 100_000.0, 2_000_000.0) * 100.0) as i64
            };
            let u = rng.random::<f64>();
            let credit_limit_cents = if u < 0.20 {
                0
            } else if u < 0.95 {
                rng.random_range(5..=200i64) * 10_000
            } else {
                rng.random_range(200..=1000i64) * 10_000
            };
            User {
                id: user_id(i + 1),
                name,
                region_id: region.id.clone(),
                balance_cents,
                credit_limit_cents,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::collections::HashSet;

    fn tmpdir(name: &str) -> TempDir {
        crate::testutil::tmpdir("refdata", name)
    }

    fn hav(a: &Region, b: &Region) -> f64 {
        // Written out independently of `haversine_km`.
        let r = 6371.0f64;
        let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
        let dla = la2 - la1;
        let dlo = (b.lon - a.lon).to_radians();
        let h = (dla / 2.0).sin() * (dla / 2.0).sin()
            + la1.cos() * la2.cos() * (dlo / 2.0).sin() * (dlo / 2.0).sin();
        2.0 * r * h.sqrt().asin()
    }

    #[test]
    fn regions_csv_round_trip() {
        let d = tmpdir("rt-regions");
        let p = d.join("regions.csv");
        let regions = generate_regions(40, 7);
        write_regions(&p, &regions).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("id,uf,name,lat,lon\n"));
        assert_eq!(text.lines().count(), 68);
        assert_eq!(read_regions(&p).unwrap(), regions);
    }

    #[test]
    fn users_csv_round_trip() {
        let d = tmpdir("rt-users");
        let p = d.join("users.csv");
        let mut users = generate_users(500, &generate_regions(10, 1), 3);
        // Names that need quoting survive too.
        users[0].name = "Silva, \"Zé\" da".to_string();
        write_users(&p, &users).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("id,name,region_id,balance_cents,credit_limit_cents\n"));
        assert_eq!(read_users(&p).unwrap(), users);
    }

    fn write(d: &Path, name: &str, text: &str) -> PathBuf {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn field_err(e: RefDataError) -> (u64, &'static str, String) {
        match e {
            RefDataError::Field {
                line,
                field,
                message,
                ..
            } => (line, field, message),
            other => panic!("expected a field error, got {other}"),
        }
    }

    /// Reads, with `read`, files `{prefix}{i}.csv` in `d` holding `start` then the `i`-th
    /// case's row, and checks the field error each gives: (row, line, field, part of
    /// the message); with `shown`, also that the error's text names file, line and field.
    fn field_cases<T: std::fmt::Debug, const N: usize>(
        d: &Path,
        prefix: &str,
        start: &str,
        cases: [(&str, u64, &str, &str); N],
        read: fn(&Path) -> Result<T, RefDataError>,
        shown: bool,
    ) {
        for (i, (row, line, field, msg)) in cases.into_iter().enumerate() {
            let p = write(d, &format!("{prefix}{i}.csv"), &format!("{start}{row}"));
            let e = read(&p).unwrap_err();
            if shown {
                let shown = e.to_string();
                assert!(
                    shown.contains(&format!("{prefix}{i}.csv: line {line}: field `{field}`")),
                    "{shown}"
                );
            }
            let (l, f, m) = field_err(e);
            assert_eq!((l, f), (line, field), "case {row:?}: {m}");
            assert!(m.contains(msg), "case {row:?}: {m}");
        }
    }

    #[test]
    fn region_read_errors() {
        let d = tmpdir("bad-regions");
        let h = "id,uf,name,lat,lon\n";
        let ok = "r1,SP,São Paulo,-23.55,-46.63\n";
        let cases: [(&str, u64, &str, &str); 7] = [
            ("r2,XX,Nowhere,0,0\n", 3, "uf", "not one of the 27"),
            ("r2,sp,Lower,0,0\n", 3, "uf", "not one of the 27"),
            ("r2,RJ,Rio,abc,0\n", 3, "lat", "bad number"),
            ("r2,RJ,Rio,91,0\n", 3, "lat", "out of range"),
            ("r2,RJ,Rio,0,-180.5\n", 3, "lon", "out of range"),
            (",RJ,Rio,0,0\n", 3, "id", "empty id"),
            ("r2,RJ,Rio,0\n", 3, "lon", "missing value"),
        ];
        field_cases(&d, "r", &format!("{h}{ok}"), cases, read_regions, false);
        let p = write(&d, "dup.csv", &format!("{h}{ok}r9,RJ,Rio,0,0\n{ok}"));
        match read_regions(&p).unwrap_err() {
            RefDataError::DuplicateId {
                line,
                first_line,
                id,
                ..
            } => assert_eq!((line, first_line, id.as_str()), (4, 2, "r1")),
            e => panic!("{e}"),
        }
        let p = write(&d, "nocol.csv", "id,uf,name,lat\nr1,SP,x,0\n");
        let e = read_regions(&p).unwrap_err();
        assert!(
            matches!(e, RefDataError::MissingColumn { column: "lon", .. }),
            "{e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("nocol.csv") && msg.contains("`lon`"), "{msg}");
        let e = read_regions(&d.join("absent.csv")).unwrap_err();
        assert!(matches!(e, RefDataError::Io { .. }), "{e}");
        // Columns in another order, a BOM and an extra column are accepted.
        let p = write(
            &d,
            "reordered.csv",
            "\u{feff}lon,lat,name,uf,id,extra\n-46.63,-23.55,São Paulo,SP,r1,x\n",
        );
        let r = read_regions(&p).unwrap();
        assert_eq!(
            r,
            vec![Region {
                id: "r1".into(),
                uf: "SP".into(),
                name: "São Paulo".into(),
                lat: -23.55,
                lon: -46.63
            }]
        );
    }

    #[test]
    fn user_read_errors() {
        let d = tmpdir("bad-users");
        let h = "id,name,region_id,balance_cents,credit_limit_cents\n";
        let ok = "u1,Ana,r001,100,0\n";
        let cases: [(&str, u64, &str, &str); 6] = [
            ("u2,Bia,r001,-1,0\n", 3, "balance_cents", "negative"),
            ("u2,Bia,r001,0,-5\n", 3, "credit_limit_cents", "negative"),
            ("u2,Bia,r001,12.50,0\n", 3, "balance_cents", "bad number"),
            ("u2,Bia,r001,,0\n", 3, "balance_cents", "bad number"),
            ("u2,Bia,,1,0\n", 3, "region_id", "empty id"),
            ("\"\",Bia,r001,1,0\n", 3, "id", "empty id"),
        ];
        field_cases(&d, "u", &format!("{h}{ok}"), cases, read_users, true);
        let p = write(&d, "dup.csv", &format!("{h}{ok}{ok}"));
        let e = read_users(&p).unwrap_err();
        assert_eq!(e.line(), Some(3));
        assert!(matches!(e, RefDataError::DuplicateId { first_line: 2, .. }));
        let users = read_users(&write(&d, "fine.csv", &format!("{h}{ok}"))).unwrap();
        let e = check_user_regions(Path::new("fine.csv"), &capitals()[1..], &users).unwrap_err();
        assert_eq!((e.line(), e.field()), (Some(2), Some("region_id")));
        check_user_regions(Path::new("fine.csv"), &capitals(), &users).unwrap();
    }

    #[test]
    fn capitals_cover_the_27_ufs() {
        let caps = capitals();
        assert_eq!(caps.len(), 27);
        let ufs: Vec<&str> = caps.iter().map(|r| r.uf.as_str()).collect();
        assert_eq!(ufs, UFS.to_vec());
        assert_eq!(ufs.iter().collect::<HashSet<_>>().len(), 27);
        let ids: Vec<String> = caps.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids.first().map(String::as_str), Some("r001"));
        assert_eq!(ids.last().map(String::as_str), Some("r027"));
        let sp = caps.iter().find(|r| r.uf == "SP").unwrap();
        assert_eq!(
            (sp.name.as_str(), sp.lat, sp.lon),
            ("São Paulo", -23.5505, -46.6333)
        );
        let df = caps.iter().find(|r| r.uf == "DF").unwrap();
        assert_eq!(df.name, "Brasília");
        // São Paulo – Rio de Janeiro is about 360 km.
        let rj = caps.iter().find(|r| r.uf == "RJ").unwrap();
        let d = hav(sp, rj);
        assert!((355.0..365.0).contains(&d), "{d}");
        assert!((haversine_km(sp.lat, sp.lon, rj.lat, rj.lon) - d).abs() < 1e-9);
    }

    #[test]
    fn generated_regions_cover_all_distance_bands() {
        let regions = generate_regions(30, 42);
        assert_eq!(regions.len(), 57);
        assert_eq!(regions[27].id, "r028");
        assert_eq!(regions[56].id, "r057");
        assert_eq!(generate_regions(30, 42), regions);
        assert_ne!(generate_regions(30, 43), regions);
        let ids: HashSet<&str> = regions.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), 57);
        let caps = capitals();
        for r in &regions[27..] {
            let c = caps
                .iter()
                .find(|c| r.name.starts_with(&format!("{} – Interior ", c.name)))
                .unwrap_or_else(|| panic!("{}", r.name));
            assert_eq!(r.uf, c.uf);
            let d = hav(r, c);
            assert!((9.9..=250.1).contains(&d), "{} is {d} km away", r.name);
        }
        let mut bands = [0usize; 4];
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                let d = hav(a, b);
                let band = if d < 50.0 {
                    0
                } else if d < 300.0 {
                    1
                } else if d < 1000.0 {
                    2
                } else {
                    3
                };
                bands[band] += 1;
            }
        }
        assert!(bands.iter().all(|&n| n > 0), "{bands:?}");
        // Already with one extra region.
        let one = generate_regions(1, 5);
        let cap = one[..27].iter().find(|c| c.uf == one[27].uf).unwrap();
        assert!(hav(&one[27], cap) < 50.0);
    }

    #[test]
    fn generated_users_are_plausible_and_deterministic() {
        let regions = generate_regions(20, 1);
        let users = generate_users(5000, &regions, 9);
        assert_eq!(users, generate_users(5000, &regions, 9));
        assert_ne!(users, generate_users(5000, &regions, 10));
        assert_eq!(users[0].id, "u000001");
        assert_eq!(users[4999].id, "u005000");
        assert_eq!(user_id(1_234_567), "u1234567");
        let region_ids: HashSet<&str> = regions.iter().map(|r| r.id.as_str()).collect();
        assert!(users
            .iter()
            .all(|u| region_ids.contains(u.region_id.as_str())));
        assert!(users
            .iter()
            .all(|u| u.balance_cents >= 0 && u.credit_limit_cents >= 0));
        let zero = users.iter().filter(|u| u.balance_cents == 0).count();
        let rich = users
            .iter()
            .filter(|u| u.balance_cents >= 10_000_000)
            .count();
        let typical = users
            .iter()
            .filter(|u| (5_000..=500_000).contains(&u.balance_cents))
            .count();
        assert!((150..400).contains(&zero), "{zero}");
        assert!((50..200).contains(&rich), "{rich}");
        assert!(typical > 3_500, "{typical}");
        let no_credit = users.iter().filter(|u| u.credit_limit_cents == 0).count();
        assert!((800..1200).contains(&no_credit), "{no_credit}");
        // São Paulo (r025) is the most common home.
        let sp = users.iter().filter(|u| u.region_id == "r025").count();
        let ac = users.iter().filter(|u| u.region_id == "r001").count();
        assert!(sp > 5 * ac.max(1), "sp {sp} ac {ac}");
        assert!(users.iter().all(|u| u.name.contains(' ')));
    }
}
